#include <stdio.h>
#include <string.h>
#include "greet.h"

/* `app --check` verifies the program's own behaviour and exits non-zero if it is wrong. */
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--check") == 0) {
        if (add(2, 3) != 5 || strcmp(greeting(), "hello from BuildNet") != 0) {
            fprintf(stderr, "check failed\n");
            return 1;
        }
        printf("check passed\n");
        return 0;
    }
    printf("%s: 2 + 3 = %d\n", greeting(), add(2, 3));
    return 0;
}
