/* The pre-puller's only program: it exits 0 and does nothing else.
 *
 * Every course-image init container of a coursehub puller runs this binary (copied into an
 * emptyDir by a trusted init container from the operator's image), so pulling an image never
 * executes anything the image ships, and images without a shell pull too. Static, so it runs
 * in any Linux image regardless of its libc (or none at all).
 */
int main(void) { return 0; }
