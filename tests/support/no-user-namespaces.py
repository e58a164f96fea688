#!/usr/bin/env python3
"""no-user-namespaces.py UID COMMAND...: runs COMMAND as UID (gid UID) inside a user namespace
in which no further user namespace can be created (user.max_user_namespaces = 0), as on a
kernel that refuses unprivileged user namespaces. Run as root: root maps 0 and UID into the
new namespace from outside. Exits with COMMAND's status."""
import ctypes, os, sys
CLONE_NEWUSER = 0x10000000
uid = int(sys.argv[1]); argv = sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe(); r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w); os.close(r2)
    if libc.unshare(CLONE_NEWUSER) != 0:
        os._exit(90)
    os.write(w2, b"u"); os.close(w2)
    os.read(r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
    os.execvp(argv[0], argv)
os.close(r); os.close(w2)
os.read(r2, 1)
for name in ("uid_map", "gid_map"):
    if name == "gid_map":
        with open("/proc/%d/setgroups" % pid, "w") as f:
            f.write("allow")
    with open("/proc/%d/%s" % (pid, name), "w") as f:
        f.write("0 0 1\n%d %d 1\n" % (uid, uid))
os.write(w, b"g"); os.close(w)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
