/**
 * routes, default and on_timeout: which route each connection takes. A
 * route has a name, a match (match.ts) and an action (action.ts).
 */
import { type Action, ACTION_KEYS, describeAction, readAction } from "./action.ts";
import { describeMatch, readMatch, type RouteMatch } from "./match.ts";
import type { Reader } from "./reader.ts";
import type { Service } from "./services.ts";

export interface Route {
  readonly name: string;
  /** null: never matched directly; only a fallback, default or on_timeout
   * names it. */
  readonly match: RouteMatch | null;
  readonly action: Action;
}

/** Where a connection goes when no route matches (or nothing arrives):
 * a route, or just closing ("default" when it is the default, "close"
 * when a handoff falls back to it). */
export type DefaultRoute =
  | Route
  | { readonly name: "default" | "close"; readonly action: { kind: "close" } };

/** Just closing, as a default route. */
function closeRoute(): DefaultRoute {
  return { name: "default", action: { kind: "close" } };
}

/** hasTls: whether there is a tls section, which https routes need. */
export function readRoutes(
  r: Reader,
  services: ReadonlyMap<string, Service>,
  hasTls: boolean,
): Route[] {
  const routes: Route[] = [];
  const n = r.length(["routes"]);
  for (let i = 0; i < n; i++) routes.push(readRoute(r, i, routes, services, hasTls));
  routes.forEach((route, i) => checkFallbacks(r, routes, route, i));
  return routes;
}

/** earlier: the routes read so far, whose names this one must not take. */
function readRoute(
  r: Reader,
  i: number,
  earlier: readonly Route[],
  services: ReadonlyMap<string, Service>,
  hasTls: boolean,
): Route {
  const at = ["routes", i];
  r.keys(at, ["name", "match", "action", ...ACTION_KEYS]);
  const name = r.required([...at, "name"], r.string([...at, "name"]));
  if (name === "close" || earlier.some((x) => x.name === name)) {
    r.fail([...at, "name"], `route name "${name}" is ${name === "close" ? "reserved" : "taken"}`);
  }
  const match = r.value([...at, "match"]) === undefined ? null : readMatch(r, [...at, "match"]);
  const action = readAction(r, at, services);
  if (action.kind === "https" && !hasTls) {
    r.fail([...at, "action"], "an https route needs a tls section");
  }
  return { name, match, action };
}

/** A fallback names close or a route, and following fallbacks must end. */
function checkFallbacks(r: Reader, routes: readonly Route[], route: Route, i: number): void {
  const seen = new Set<string>();
  for (let at: Route | undefined = route; at?.action.kind === "handoff";) {
    const next: string = at.action.fallback;
    if (next === "close") break;
    const found: Route | undefined = routes.find((x) => x.name === next);
    if (!found) {
      r.fail(
        ["routes", i, "fallback"],
        `no route named "${next}" (expected close or a route's name)`,
      );
    }
    if (seen.has(next) || next === route.name) {
      r.fail(["routes", i, "fallback"], `fallbacks go round in a circle through "${next}"`);
    }
    seen.add(next);
    at = found;
  }
}

/** default, then on_timeout, which falls back to default. */
export function readDefaultRoutes(
  r: Reader,
  routes: readonly Route[],
): { defaultRoute: DefaultRoute; timeoutRoute: DefaultRoute } {
  const defaultRoute = readNamedRoute(r, routes, "default", closeRoute());
  return { defaultRoute, timeoutRoute: readNamedRoute(r, routes, "on_timeout", defaultRoute) };
}

function readNamedRoute(
  r: Reader,
  routes: readonly Route[],
  key: "default" | "on_timeout",
  fallback: DefaultRoute,
): DefaultRoute {
  const name = r.string([key]);
  if (name === undefined) return fallback;
  if (name === "close") return closeRoute();
  const named = routes.find((x) => x.name === name);
  if (!named) r.fail([key], `no route named "${name}" (expected close or a route's name)`);
  return named;
}

export function describeRoutes(routes: readonly Route[]): Record<string, unknown>[] {
  return routes.map((r) => ({
    name: r.name,
    ...(r.match ? { match: describeMatch(r.match) } : {}),
    ...describeAction(r.action),
  }));
}

/** A route's name, or close. */
export function describeDefaultRoute(d: DefaultRoute): string {
  return d.name === "default" ? "close" : d.name;
}
