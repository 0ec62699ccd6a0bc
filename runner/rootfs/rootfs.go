// Package rootfs provides the root filesystem a container gets when the
// user names none: a minimal tree built from the host's static busybox
// (Debian package busybox-static), made once and cached, so that
// `runner run -- ping ...` works on a fresh machine with no image at all.
package rootfs

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// FindBusybox returns the path of a statically linked busybox on PATH.
// A dynamically linked one would not run inside a rootfs without libc.
func FindBusybox() (string, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("no busybox on PATH for the default rootfs: install busybox-static or pass --rootfs DIR")
	}
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked: install busybox-static or pass --rootfs DIR", path)
		}
	}
	return path, nil
}

// layoutVersion names what build puts in the tree besides busybox; a new
// one gives a new cached tree.
const layoutVersion = 2

// IndexPage is /index.html of the default rootfs: busybox httpd serves its
// working directory, /, so `httpd -f -p 80` answers with a page.
const IndexPage = "<!DOCTYPE html>\n<title>berth</title>\n<p>Hello from a berth container: busybox httpd serving /index.html of the default rootfs.</p>\n"

// Busybox returns the directory of the default rootfs for the busybox
// binary at busybox, building it under cacheDir when it does not exist.
// The cache is keyed by the binary's content, so upgrading busybox gives
// a new tree; concurrent callers race safely (build aside, then rename).
func Busybox(cacheDir, busybox string) (string, error) {
	sum, err := fileHash(busybox)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cacheDir, fmt.Sprintf("busybox-%s-v%d", sum[:16], layoutVersion))
	if _, err := os.Stat(filepath.Join(dir, "bin", "busybox")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("creating rootfs cache %s: %w", cacheDir, err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".build-")
	if err != nil {
		return "", fmt.Errorf("building default rootfs: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := build(tmp, busybox); err != nil {
		return "", fmt.Errorf("building default rootfs from %s: %w", busybox, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another runner finished the same tree first: use theirs.
		if _, serr := os.Stat(filepath.Join(dir, "bin", "busybox")); serr == nil {
			return dir, nil
		}
		return "", fmt.Errorf("installing default rootfs: %w", err)
	}
	return dir, nil
}

func build(root, busybox string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home", "var/tmp", "var/log", "run", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|fs.ModeSticky); err != nil {
		return err
	}
	if err := copyFile(busybox, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		link := filepath.Join(root, filepath.Clean("/"+applet))
		if link == filepath.Join(root, "bin", "busybox") {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", link); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname": "",
		"etc/hosts":    "",
		// runner writes the container's own copies at start; these are
		// placeholders so the files exist in the read-only lower layer.
		"etc/resolv.conf": "",
		"index.html":      IndexPage,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
