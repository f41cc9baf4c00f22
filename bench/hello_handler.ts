/** The HTTPS handler both sides of the HTTPS benchmark serve. */
export default {
  fetch(): Response {
    return new Response("hello\n");
  },
};
