/*
 * deadlock.c - test target for varta-evidence (grown from the spike's, see
 * docs/spikes/evidence, plus the "churn" mode).
 *
 * Built by the tests with `cc -O2 -g -pthread` (no -fno-omit-frame-pointer:
 * -O2 omits frame pointers, so an unwinder must use .eh_frame).
 *
 *   usage: deadlock N_WAITERS [TICKER_LOG [spin|churn|dstate|exec|signals|loops]]
 *
 * - one "holder" thread takes the mutex and sleeps forever inside the noinline
 *   function holdout_hold_lock() (nanosleep loop);
 * - N "waiter" threads block on the same mutex inside waiter_take_lock();
 * - one "ticker" thread loops on a ~1 ms nanosleep and measures the gap between
 *   iterations. Every gap longer than 1.5 ms is appended to TICKER_LOG as
 *   "<CLOCK_MONOTONIC end ns> <gap ns>\n", so a harness can compute the pause
 *   a capture inflicted on a running thread within its own time window.
 *   With a third argument "spin" the ticker busy-loops instead (always running, so any
 *   stop shows up in full) and logs gaps > 100 us.
 *   With "churn" a further thread creates short-lived threads (each sleeps
 *   100 us and exits) in a loop, so threads appear and vanish during a capture.
 *   With "dstate" a thread named "vforker" calls vfork(); its child (which
 *   dies with that thread: PR_SET_PDEATHSIG) pauses forever, so the thread
 *   stays in a killable vfork wait, which /proc shows as state D.
 *   With "exec" a SIGUSR1 makes whichever thread takes it execute
 *   /bin/sleep 600 (another program: the exe link changes), so a harness
 *   can have the process exec while it is being captured.
 *   With "loops" a thread named "looper" waits in epoll_wait and one named
 *   "poller" in poll, each on a pipe nobody writes (idle event loops), and
 *   one named "reader" in read on a Unix socketpair nobody writes.
 *   With "signals" every SIGRTMIN (real-time: each one queued, none merged)
 *   a thread takes appends the line "S" to TICKER_LOG, so a harness can
 *   check that no signal sent during captures was lost.
 *   The all-time max gap is also printed to stderr every 10 s.
 *
 * The main thread prints "READY <pid>" once every waiter has been created and
 * then joins the holder forever. With VARTA_SOCKET set it first reads 32-byte
 * VLP frames from stdin until EOF and sends each to that Unix datagram
 * socket (the collector's end-to-end test encodes them with this pid), so
 * the deadlocked process is a tracked agent that then goes silent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static pthread_mutex_t the_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t ready_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cond = PTHREAD_COND_INITIALIZER;
static int holder_ready;
static int ticker_fd = -1;
static int ticker_spin; /* argv[3] == "spin": busy-loop ticker, logs gaps > 100 us */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The holder sleeps here forever with the_lock held. */
__attribute__((noinline)) void holdout_hold_lock(pthread_mutex_t *m) {
    pthread_mutex_lock(m);
    pthread_mutex_lock(&ready_lock);
    holder_ready = 1;
    pthread_cond_signal(&ready_cond);
    pthread_mutex_unlock(&ready_lock);
    for (;;) {
        struct timespec ts = {3600, 0};
        nanosleep(&ts, NULL);
    }
}

/* Every waiter blocks here (futex wait inside pthread_mutex_lock). */
__attribute__((noinline)) void waiter_take_lock(pthread_mutex_t *m) {
    pthread_mutex_lock(m);
    /* never reached */
    pthread_mutex_unlock(m);
    __asm__ volatile("" ::: "memory"); /* keep this a real frame, not a tail call */
}

static void *holder_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "holder");
    holdout_hold_lock(&the_lock);
    return NULL;
}

static void *waiter_main(void *arg) {
    (void)arg;
    waiter_take_lock(&the_lock);
    return NULL;
}

static void *short_lived_main(void *arg) {
    (void)arg;
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
    return NULL;
}

/* Creates and joins short-lived threads forever. */
static void *churn_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "churn");
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived_main, NULL) == 0) pthread_join(t, NULL);
    }
    return NULL;
}

/* An event loop with nothing to do: epoll_wait on a pipe nobody writes. */
static void *looper_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "looper");
    int p[2];
    if (pipe(p) != 0) return NULL;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    for (;;) epoll_wait(ep, &ev, 1, -1);
    return NULL;
}

/* A poll loop with nothing to do: poll on a pipe nobody writes. */
static void *poller_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "poller");
    int p[2];
    if (pipe(p) != 0) return NULL;
    struct pollfd pfd = { .fd = p[0], .events = POLLIN };
    for (;;) poll(&pfd, 1, -1);
    return NULL;
}

/* A reader waiting for a peer that never writes: read on a socketpair. */
static void *reader_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "reader");
    int sv[2];
    char c;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return NULL;
    for (;;) if (read(sv[0], &c, 1) <= 0) break;
    return NULL;
}

/* Sits in the vfork wait (state D) for as long as the child pauses. */
static void *vforker_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "vforker");
    pid_t child = vfork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;) pause();
    }
    return NULL;
}

static void *ticker_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "ticker");
    uint64_t max_gap = 0, last_report = now_ns(), prev = now_ns();
    const uint64_t threshold = ticker_spin ? 100000 : 1500000;
    for (;;) {
        if (!ticker_spin) {
            struct timespec ts = {0, 1000000}; /* 1 ms */
            nanosleep(&ts, NULL);
        }
        uint64_t t = now_ns();
        uint64_t gap = t - prev;
        prev = t;
        if (gap > max_gap) max_gap = gap;
        if (gap > threshold && ticker_fd >= 0) {
            char buf[64];
            int n = snprintf(buf, sizeof buf, "%llu %llu\n",
                             (unsigned long long)t, (unsigned long long)gap);
            if (write(ticker_fd, buf, (size_t)n) < 0) { /* ignore */ }
        }
        if (t - last_report > 10ull * 1000000000ull) {
            fprintf(stderr, "ticker: max gap so far %.3f ms\n", max_gap / 1e6);
            last_report = t;
        }
    }
    return NULL;
}

/* write is async-signal-safe; O_APPEND keeps each line whole. */
static void count_signal(int sig) {
    (void)sig;
    if (ticker_fd >= 0 && write(ticker_fd, "S\n", 2) < 0) { /* ignore */ }
}

/* execv is async-signal-safe; the other threads die in the exec. */
static void exec_sleep(int sig) {
    (void)sig;
    char *const argv[] = { "sleep", "600", NULL };
    execv("/bin/sleep", argv);
    _exit(127);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    ticker_spin = argc > 3 && strcmp(argv[3], "spin") == 0;
    int churn = argc > 3 && strcmp(argv[3], "churn") == 0;
    int dstate = argc > 3 && strcmp(argv[3], "dstate") == 0;
    if (argc > 3 && strcmp(argv[3], "exec") == 0) signal(SIGUSR1, exec_sleep);
    if (argc > 3 && strcmp(argv[3], "signals") == 0) {
        struct sigaction sa = { .sa_handler = count_signal, .sa_flags = SA_RESTART };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGRTMIN, &sa, NULL);
    }
    if (argc > 2 && strcmp(argv[2], "-") != 0) {
        ticker_fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (ticker_fd < 0) { perror("open ticker log"); return 1; }
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* 256 waiters must fit easily */

    pthread_t holder, ticker;
    pthread_create(&holder, &attr, holder_main, NULL);
    pthread_mutex_lock(&ready_lock);
    while (!holder_ready) pthread_cond_wait(&ready_cond, &ready_lock);
    pthread_mutex_unlock(&ready_lock);

    pthread_create(&ticker, &attr, ticker_main, NULL);
    if (dstate) {
        pthread_t v;
        pthread_create(&v, &attr, vforker_main, NULL);
    }
    if (churn) {
        pthread_t c;
        pthread_create(&c, &attr, churn_main, NULL);
    }
    if (argc > 3 && strcmp(argv[3], "loops") == 0) {
        pthread_t l, p, r;
        pthread_create(&l, &attr, looper_main, NULL);
        pthread_create(&p, &attr, poller_main, NULL);
        pthread_create(&r, &attr, reader_main, NULL);
    }
    for (int i = 0; i < n; i++) {
        pthread_t t;
        int rc = pthread_create(&t, &attr, waiter_main, NULL);
        if (rc) { fprintf(stderr, "pthread_create: %s\n", strerror(rc)); return 1; }
        char name[16];
        snprintf(name, sizeof name, "waiter-%d", i);
        pthread_setname_np(t, name);
    }
    printf("READY %d\n", (int)getpid());
    fflush(stdout);
    const char *sock = getenv("VARTA_SOCKET");
    if (sock) {
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un to = { .sun_family = AF_UNIX };
        strncpy(to.sun_path, sock, sizeof to.sun_path - 1);
        unsigned char frame[32];
        while (fread(frame, 1, sizeof frame, stdin) == sizeof frame) {
            if (sendto(fd, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) != sizeof frame) {
                perror("sendto");
            }
        }
    }
    pthread_join(holder, NULL);
    return 0;
}
