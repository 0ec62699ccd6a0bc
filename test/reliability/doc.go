// Package reliability holds berth's fault, churn and hostile-input suites.
// They run the real components on the test bed (test/testbed): the etcd
// server binary (a 3-member cluster where it matters), netd, the CNI
// plugins through libcni, inside network namespaces the tests create.
// Each test injects faults (SIGKILL of netd or of etcd members, etcd
// outages and data loss, hostile values in etcd, containers churning
// across nodes) and then proves that nothing was lost: no duplicate
// subnet or address, no stale route, FDB or neighbour entry, no leaked
// link, address or rule, and full connectivity.
//
// The package has only tests; see README.md, "Reliability and security",
// for what they inject and what they measured.
package reliability
