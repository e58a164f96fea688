/* The attack suite's hostile builder: one static program, bound into the sandbox at
 * /bin/hostile, whose first argument names the attack. Each attempt prints one line
 * "<attempt>=ok" or "<attempt>=errno <n>" to stdout; the suite reads them from the output
 * or the build log. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

static void report(const char *what, long rc) {
    if (rc < 0)
        printf("%s=errno %d\n", what, errno);
    else
        printf("%s=ok\n", what);
    fflush(stdout);
}

/* A raw system call through the i386 entry point (int 0x80). */
static long int80(long nr, long a, long b) {
    long rc;
    __asm__ volatile("int $0x80" : "=a"(rc) : "a"(nr), "b"(a), "c"(b) : "memory");
    if (rc < 0 && rc > -4096) {
        errno = (int)-rc;
        return -1;
    }
    return rc;
}

static int abstract_address(const char *name, struct sockaddr_un *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t len = strlen(name);
    memcpy(sa->sun_path + 1, name, len);
    return (int)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
}

/* Connects to an abstract socket; when it works, passes an fd of `path` (opened for writing)
 * across, as the CVE-2024-27297 exploit did. */
static void connect_abstract(const char *name, const char *path) {
    struct sockaddr_un sa;
    int len = abstract_address(name, &sa);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    long rc = s < 0 ? -1 : connect(s, (struct sockaddr *)&sa, len);
    report("connect-abstract", rc);
    if (rc == 0 && path) {
        int fd = open(path, O_WRONLY | O_CREAT, 0644);
        char byte = 'x';
        struct iovec iov = {&byte, 1};
        char buf[CMSG_SPACE(sizeof(int))];
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf;
        msg.msg_controllen = sizeof buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
        report("send-fd", sendmsg(s, &msg, 0));
    }
}

/* Listens on an abstract socket for `ms` milliseconds; reports whether anyone connected. */
static void listen_abstract(const char *name, int ms) {
    struct sockaddr_un sa;
    int len = abstract_address(name, &sa);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    report("bind-abstract", bind(s, (struct sockaddr *)&sa, len));
    listen(s, 4);
    for (int waited = 0; waited < ms; waited += 50) {
        int c = accept(s, NULL, NULL);
        if (c >= 0) {
            printf("accepted=ok\n");
            fflush(stdout);
            return;
        }
        usleep(50000);
    }
    printf("accepted=none\n");
    fflush(stdout);
}

static void connect_tcp(const char *ip, int port) {
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, ip, &sa.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    report("connect-tcp", s < 0 ? -1 : connect(s, (struct sockaddr *)&sa, sizeof sa));
}

/* Runs a call that the seccomp filter may answer by killing the process in a child, and
 * reports "killed <signal>" in that case. */
static void in_child(const char *what, long (*call)(const char *), const char *file) {
    pid_t pid = fork();
    if (pid == 0) {
        long rc = call(file);
        _exit(rc < 0 ? 100 + (errno & 0x7f) : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        printf("%s=killed %d\n", what, WTERMSIG(status));
    else if (WEXITSTATUS(status) == 0)
        printf("%s=ok\n", what);
    else
        printf("%s=errno %d\n", what, WEXITSTATUS(status) - 100);
    fflush(stdout);
}

static long i386_chmod(const char *file) { return int80(15, (long)file, 04755); }
static long x32_chmod(const char *file) { return syscall(90 | 0x40000000, file, 04755); }

static void setid(const char *file) {
    int fd = open(file, O_RDONLY);
    report("chmod-setuid", chmod(file, 04755));
    report("fchmod-setgid", fchmod(fd, 02755));
    report("fchmodat-setuid", fchmodat(AT_FDCWD, file, 04755, 0));
    report("fchmodat2-setuid", syscall(452, AT_FDCWD, file, 04755, 0));
    /* i386 chmod is 15; x32 chmod is 90 | 0x40000000. */
    in_child("i386-chmod-setuid", i386_chmod, file);
    in_child("x32-chmod-setuid", x32_chmod, file);
    report("mknod-char-device", mknod("device", S_IFCHR | 0600, makedev(1, 3)));
    report("mknod-block-device", mknod("block", S_IFBLK | 0600, makedev(7, 0)));
}

static void xattrs(const char *file) {
    int fd = open(file, O_RDONLY);
    report("setxattr", setxattr(file, "user.evil", "1", 1, 0));
    report("lsetxattr", lsetxattr(file, "user.evil", "1", 1, 0));
    report("fsetxattr", fsetxattr(fd, "user.evil", "1", 1, 0));
    /* setxattrat (Linux 6.13): dirfd, path, at-flags, name, struct xattr_args, size. */
    struct { unsigned long long value; unsigned int size, flags; } args = {
        (unsigned long long)(unsigned long)"1", 1, 0};
    report("setxattrat", syscall(463, AT_FDCWD, file, 0, "user.evil", &args, sizeof args));
    report("setxattr-acl", setxattr(file, "system.posix_acl_access", "\2\0\0\0", 4, 0));
}

static void new_syscalls(void) {
    char params[120] = {0};
    report("io_uring_setup", syscall(425, 4, params));
    report("syscall-1000", syscall(1000, 0, 0));
    report("syscall-600", syscall(600, 0, 0));
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "setid") && argc > 2)
        setid(argv[2]);
    else if (!strcmp(argv[1], "xattr") && argc > 2)
        xattrs(argv[2]);
    else if (!strcmp(argv[1], "syscalls"))
        new_syscalls();
    else if (!strcmp(argv[1], "connect-abstract") && argc > 2)
        connect_abstract(argv[2], argc > 3 ? argv[3] : NULL);
    else if (!strcmp(argv[1], "listen-abstract") && argc > 3)
        listen_abstract(argv[2], atoi(argv[3]));
    else if (!strcmp(argv[1], "connect-tcp") && argc > 3)
        connect_tcp(argv[2], atoi(argv[3]));
    else
        return 2;
    return 0;
}
