package rootfs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestBusybox(t *testing.T) {
	bb, err := FindBusybox()
	if err != nil {
		t.Skip(err) // CI installs busybox-static
	}
	cache := t.TempDir()
	dir, err := Busybox(cache, bb)
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"bin/sh", "bin/ping", "usr/sbin/httpd", "bin/hostname"} {
		target, err := os.Readlink(filepath.Join(dir, applet))
		if err != nil || target != "/bin/busybox" {
			t.Errorf("%s -> %q (%v), want /bin/busybox", applet, target, err)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "etc"} {
		if fi, err := os.Stat(filepath.Join(dir, d)); err != nil || !fi.IsDir() {
			t.Errorf("no /%s in the rootfs: %v", d, err)
		}
	}
	// Cached: the same tree again, nothing else left in the cache.
	again, err := Busybox(cache, bb)
	if err != nil || again != dir {
		t.Errorf("second Busybox = %s, %v; want the cached %s", again, err, dir)
	}
	if entries, _ := os.ReadDir(cache); len(entries) != 1 {
		t.Errorf("cache holds %d entries, want 1", len(entries))
	}
}

func TestFindBusyboxRejectsDynamic(t *testing.T) {
	dir := t.TempDir()
	// /bin/true is dynamically linked on Debian; call it busybox.
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if _, err := FindBusybox(); err == nil {
		t.Error("FindBusybox accepted a dynamically linked binary")
	}
}
