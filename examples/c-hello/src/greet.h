#ifndef GREET_H
#define GREET_H
int add(int a, int b);
const char *greeting(void);
#endif
