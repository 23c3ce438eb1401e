/*
 * eintr.c - does a PTRACE_SEIZE+INTERRUPT+DETACH of a thread make its blocking syscall
 * return EINTR (visible to the application) instead of being transparently restarted?
 * Threads: "epoll" blocks in epoll_wait(-1), "read" blocks in read() on a pipe,
 * "futexcv" in pthread_cond_wait, "sleep" in nanosleep(3600 s), "poll" in poll(-1),
 * "sigwait" in sigtimedwait(3600 s). Each prints a line whenever its call returns.
 * usage: eintr ; prints "READY pid"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static int pfd[2];
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void report(const char *who, long r) {
    printf("%s returned %ld errno=%s\n", who, r, r < 0 ? strerror(errno) : "-");
    fflush(stdout);
}
static void *t_epoll(void *a) {
    (void)a; pthread_setname_np(pthread_self(), "epoll");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &ev);
    for (;;) { struct epoll_event out; report("epoll_wait", epoll_wait(ep, &out, 1, -1)); }
}
static void *t_read(void *a) {
    (void)a; pthread_setname_np(pthread_self(), "read");
    for (;;) { char c; report("read", read(pfd[0], &c, 1)); }
}
static void *t_cv(void *a) {
    (void)a; pthread_setname_np(pthread_self(), "futexcv");
    pthread_mutex_lock(&m);
    for (;;) report("cond_wait", pthread_cond_wait(&cv, &m) ? -1 : 0);
}
static void *t_sleep(void *a) {
    (void)a; pthread_setname_np(pthread_self(), "sleep");
    for (;;) { struct timespec ts = {3600, 0}; report("nanosleep", nanosleep(&ts, NULL)); }
}
static void *t_poll(void *a) {
    (void)a; pthread_setname_np(pthread_self(), "poll");
    for (;;) { struct pollfd p = {.fd = pfd[0], .events = POLLPRI}; report("poll", poll(&p, 1, -1)); }
}
static void *t_sigwait(void *a) {
    (void)a; pthread_setname_np(pthread_self(), "sigwait");
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR2);
    for (;;) { struct timespec ts = {3600, 0}; report("sigtimedwait", sigtimedwait(&s, NULL, &ts)); }
}
int main(void) {
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    if (pipe(pfd)) return 1;
    void *(*fns[])(void *) = {t_epoll, t_read, t_cv, t_sleep, t_poll, t_sigwait};
    for (unsigned i = 0; i < sizeof fns / sizeof *fns; i++) { pthread_t t; pthread_create(&t, NULL, fns[i], NULL); }
    printf("READY %d\n", (int)getpid()); fflush(stdout);
    for (;;) pause();
}
