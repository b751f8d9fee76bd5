/*
 * flawed.c — a program with one memory error of each kind the memcheck
 * tests must catch, selected by argv[1]. memcheck_selftest_* run it through
 * run.sh and expect a failure, so a memcheck stage that silently stopped
 * seeing errors (a wrong flag, a lost report) fails the suite.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "leak")) {
        char *p = malloc(64);
        if (!p)
            return 2;
        snprintf(p, 64, "lost");
        p = NULL; /* the only pointer is gone: a definite leak at exit */
        return 0;
    }
    if (!strcmp(argv[1], "uninit")) {
        int *v = malloc(4 * sizeof *v);
        if (!v)
            return 2;
        if (v[2] > 0) /* a branch on an uninitialised value */
            puts("positive");
        free(v);
        return 0;
    }
    if (!strcmp(argv[1], "overrun")) {
        volatile char *p = malloc(8);
        if (!p)
            return 2;
        char c = p[8]; /* one past the end of the block */
        free((void *)p);
        return c == 1;
    }
    return 2;
}
