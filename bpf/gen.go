package bpf

// The committed capture_bpfel.go and capture_bpfel.o come from this line.
// Regenerating needs Debian 12's clang 14, llvm (for llvm-strip), libbpf-dev
// and gcc-multilib (for <asm/types.h>); other clang versions produce
// different bytes. Building the package needs none of them.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" capture capture.c
