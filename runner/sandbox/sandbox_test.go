package sandbox

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	plain := filepath.Join(dir, "data")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(plain, []byte("x"), 0o644)
	for _, tc := range []struct {
		name, path, want string
		code             int
	}{
		{"tool", "/nonexistent:" + dir, exe, 0},
		{exe, "", exe, 0},
		{"data", dir, "", 126},
		{"missing", dir, "", 127},
		{filepath.Join(dir, "missing"), "", "", 127},
		{dir, "", "", 126},
	} {
		got, err := LookPath(tc.name, tc.path)
		if tc.code == 0 {
			if err != nil || got != tc.want {
				t.Errorf("LookPath(%q, %q) = %q, %v; want %q", tc.name, tc.path, got, err, tc.want)
			}
			continue
		}
		ce, ok := err.(*CommandError)
		if !ok || ce.Code() != tc.code {
			t.Errorf("LookPath(%q, %q) = %q, %v; want a CommandError with code %d", tc.name, tc.path, got, err, tc.code)
		}
	}
}

func TestFailureRoundTrip(t *testing.T) {
	if err := ReadFailure(nil); err != nil {
		t.Errorf("no report means success, got %v", err)
	}
	err := ReadFailure([]byte(`{"msg":"exec \"x\": executable file not found in $PATH","code":127}`))
	f, ok := err.(*Failure)
	if !ok || f.ExitCode() != 127 || f.Error() == "" {
		t.Errorf("ReadFailure = %#v", err)
	}
	if err := ReadFailure([]byte("garbage")); err == nil {
		t.Error("garbage report read as success")
	}
}
