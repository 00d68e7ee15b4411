/*
 * isolate.c - runs a measurement in a forked child process.
 *
 * Used to measure in a process that has never had a second thread: glibc
 * and libstdc++ take cheaper paths there (see main.c), which no later call
 * can bring back once this process has started a thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

void bench_run_in_child(void (*fn)(void *data), void *data, size_t size)
{
    int fd[2];
    fflush(NULL); /* or the child would inherit and print buffered output */
    if (pipe(fd) != 0)
        bench_fail("pipe failed");
    pid_t pid = fork();
    if (pid < 0)
        bench_fail("fork failed");

    if (pid == 0) {
        /* Child: bench_fail exits with status 1, which the parent reports. */
        close(fd[0]);
        fn(data);
        const char *p = data;
        for (size_t done = 0; done < size;) {
            ssize_t w = write(fd[1], p + done, size - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                _exit(1);
            done += (size_t)w;
        }
        _exit(0);
    }

    close(fd[1]);
    char *p = data;
    size_t done = 0;
    while (done < size) {
        ssize_t r = read(fd[0], p + done, size - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    close(fd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || done != size)
        bench_fail("the measurement in a child process failed (see above)");
}
