package fastpath

// The programs are C (bpf/fastpath.c), compiled with clang into a BPF
// object that bpf2go embeds (fastpath_bpfel.o) with Go types for its maps
// (fastpath_bpfel.go). Both are committed, so `go build` needs no clang;
// `make bpf` regenerates them and `make lint` fails when they are stale.
//go:generate go tool bpf2go -cc clang -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../bpfinclude" fastpath bpf/fastpath.c
