/* The standalone runtime's private-access rule, driven by tests/test_export.py:
 * scenarios on stdin, one outcome per check on stdout. */
/* Reads a scenario per block of lines from stdin; prints each check's outcome. */
int main(void)
{
	char cmd[16];
	unsigned long long a, b, c, d, e, f;
	struct gl_out o;

	gl_own_fd[3] = 1;
	while (scanf("%15s", cmd) == 1) {
		if (!strcmp(cmd, "vm") && scanf("%llu %llu", &a, &b) == 2) {
			gl_nvms = gl_ngmems = 0;
			gl_vms[0] = (struct gl_vm){ .type = a, .hidden_fd = -1 };
			gl_rmap_init(&gl_vms[0].attributes, 0);
			gl_vm_of[3] = ++gl_nvms;
			gl_inplace_state = (int)b;
		} else if (!strcmp(cmd, "attr") && scanf("%llu %llu %llu", &a, &b, &c) == 3) {
			gl_rmap_set(&gl_vms[0].attributes, a, b, c);
		} else if (!strcmp(cmd, "gmem") && scanf("%llu", &a) == 1) {
			struct gl_gmem *g = &gl_gmems[gl_ngmems++];

			g->tracked = gl_inplace();
			if (g->tracked)
				gl_rmap_init(&g->attributes, a ? 0 : KVM_MEMORY_ATTRIBUTE_PRIVATE);
		} else if (!strcmp(cmd, "gattr") && scanf("%llu %llu %llu %llu", &a, &b, &c, &d) == 4) {
			if (gl_gmems[a].tracked)
				gl_rmap_set(&gl_gmems[a].attributes, b, c, d);
		} else if (!strcmp(cmd, "slot") &&
			   scanf("%llu %llu %llu %llu %llu", &a, &b, &c, &d, &e) == 5) {
			gl_record_memslot(3, (uint32_t)a, b, c, 0, (int)d, e);
		} else if (!strcmp(cmd, "check") && scanf("%llu %llu %llu", &a, &b, &f) == 3) {
			int private_access = (int)f - 1;

			if (gl_check_private(&gl_vms[0], a, b, private_access, &o))
				printf("%s\n", o.msg);
			else
				printf("ok\n");
		}
	}
	return 0;
}
