"""Socket activation as systemd does it (sd_listen_fds(3)), for tests:
binds 127.0.0.1:PORT and holds it, then runs COMMAND with the socket as fd
3 and LISTEN_PID, LISTEN_FDS=1, LISTEN_FDNAMES=https set for it. Reads
lines on stdin: "restart" stops the command (SIGTERM, waits) and starts it
again on the same socket, as `systemctl restart` does while the socket
unit holds the port; "stop" stops it and exits. Says what it does as JSON
lines on stdout (the command's output goes there too).

  socket_holder.py PORT COMMAND...
"""
import json
import os
import signal
import socket
import sys

port, command = int(sys.argv[1]), sys.argv[2:]
held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
held.bind(("127.0.0.1", port))
held.listen(4096)


def say(**kw):
    print(json.dumps(kw), flush=True)


def start():
    pid = os.fork()
    if pid == 0:
        if held.fileno() != 3:
            os.dup2(held.fileno(), 3)
        os.set_inheritable(3, True)
        env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="https")
        os.execvpe(command[0], command, env)
    return pid


def stop(pid):
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


child = start()
say(event="holding", port=port, pid=child)
for line in sys.stdin:
    code = stop(child)
    if line.strip() == "stop":
        say(event="stopped", code=code)
        break
    child = start()
    say(event="restarted", code=code, pid=child)
