"""Run a command; write "seconds peak_rss_kib" to file descriptor FD: `python -I -S launch.py FD CMD...`."""

# A fresh, small interpreter forks the command so that it does not inherit a large parent's peak RSS
# (Linux carries the forking process's RSS high-water mark into the child's ru_maxrss).
import os
import sys
import time

fd = int(sys.argv[1])
os.set_inheritable(fd, False)
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        print(f"{sys.argv[2]}: {exc}", file=sys.stderr)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{time.perf_counter() - start} {usage.ru_maxrss}".encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
