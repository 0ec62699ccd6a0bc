package kubecluster

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/berthnet/berth/internal/ociimage"
)

// ToolsImage is the test pods' image: busybox-static (sh, ping, wget,
// nc, httpd, ...) and iperf3 with its shared libraries. busybox httpd
// serves /www; GET /cgi-bin/ip answers with the client's address as the
// pod sees it (REMOTE_ADDR), to show that a source address was kept.
const ToolsImage = "berth.test/tools:1"

// busyboxApplets get a symlink to /bin/busybox in the tools image.
var busyboxApplets = []string{"sh", "ping", "wget", "httpd", "nc", "sleep", "cat", "ip", "ls", "echo",
	"hostname", "ifconfig", "route", "true", "false", "kill", "ps", "env", "grep", "seq", "date", "timeout"}

const whoamiCGI = `#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "$REMOTE_ADDR"
`

// LoadTestImages builds the pause and tools images (once per cluster) and
// imports them into every node's containerd.
func (c *Cluster) LoadTestImages(ctx context.Context) error {
	dir := filepath.Join(c.Dir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pauseBin := filepath.Join(dir, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", pauseBin, "github.com/berthnet/berth/test/kubecluster/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("kubecluster: building the pause binary: %w: %s", err, out)
	}
	pause := ociimage.Image{Name: PauseImage, Entrypoint: []string{"/pause"},
		Files: []ociimage.File{{Path: "/pause", Mode: 0o755, Source: pauseBin}}}
	tools, err := toolsImage()
	if err != nil {
		return err
	}
	var tars []string
	for _, img := range []*ociimage.Image{&pause, tools} {
		path := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(img.Name)+".tar")
		if err := img.WriteFile(path); err != nil {
			return fmt.Errorf("kubecluster: %w", err)
		}
		tars = append(tars, path)
	}
	return c.ImportImages(ctx, tars...)
}

// ImportImages imports OCI image tars into every node's containerd (what
// `ctr -n k8s.io images import` does on a real node), the nodes side by
// side.
func (c *Cluster) ImportImages(ctx context.Context, tars ...string) error {
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, tar := range tars {
				if out, err := n.ctr(ctx, "images", "import", tar); err != nil {
					errs[i] = fmt.Errorf("kubecluster: importing %s into %s: %w: %s", tar, n.Name, err, out)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func toolsImage() (*ociimage.Image, error) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("kubecluster: busybox-static is not installed: %w", err)
	}
	iperf3, err := exec.LookPath("iperf3")
	if err != nil {
		return nil, fmt.Errorf("kubecluster: iperf3 is not installed: %w", err)
	}
	img := &ociimage.Image{
		Name: ToolsImage,
		Cmd:  []string{"sh"},
		Files: []ociimage.File{
			{Path: "/bin/busybox", Mode: 0o755, Source: busybox},
			{Path: "/usr/bin/iperf3", Mode: 0o755, Source: iperf3},
			{Path: "/www/index.html", Mode: 0o644, Data: []byte("berth\n")},
			{Path: "/www/cgi-bin/ip", Mode: 0o755, Data: []byte(whoamiCGI)},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
			{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/:/bin/sh\n")},
		},
	}
	for _, a := range busyboxApplets {
		img.Files = append(img.Files, ociimage.File{Path: "/bin/" + a, Mode: fs.ModeSymlink | 0o777, Link: "busybox"})
	}
	libs, err := sharedLibraries(iperf3)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		img.Files = append(img.Files, ociimage.File{Path: l, Mode: 0o755, Source: l})
	}
	return img, nil
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// sharedLibraries lists the files the dynamic binary bin loads (its
// interpreter included), as ldd prints them.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("kubecluster: ldd %s: %w", bin, err)
	}
	var libs []string
	for _, m := range lddLine.FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("kubecluster: ldd %s listed no libraries: %s", bin, out)
	}
	return libs, nil
}
