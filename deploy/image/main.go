// Command image writes berth's container image, an OCI image layout tar,
// from the binaries in bin/ (netd and the berth-* CNI plugins), without a
// container engine: `make image`. Load it with
//
//	ctr -n k8s.io images import bin/images/berth.tar
//
// (or podman load, skopeo copy oci-archive:...). The image holds only
// static binaries in /usr/local/bin and an empty /tmp; its entrypoint is
// netd. The Kubernetes DaemonSet runs `netd install-cni` from it to put
// the plugins into the host's CNI bin dir.
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/berthnet/berth/internal/nodeinstall"
	"github.com/berthnet/berth/internal/ociimage"
)

func main() {
	binDir := flag.String("bin", "bin", "directory holding the berth-* plugins (make build)")
	netdBin := flag.String("netd", "bin/kubernetes/netd", "netd built with the Kubernetes datastore (go build -tags kubernetes ./cmd/netd; make image does)")
	out := flag.String("o", "bin/images/berth.tar", "the OCI image tar to write")
	name := flag.String("name", "docker.io/berthnet/berth:dev", "image reference it is imported as; the manifests' image")
	flag.Parse()
	if err := build(*binDir, *netdBin, *out, *name); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func build(binDir, netd, out, name string) error {
	plugins, err := filepath.Glob(filepath.Join(binDir, nodeinstall.PluginPrefix+"*"))
	if err != nil {
		return err
	}
	var files []ociimage.File
	for _, p := range append([]string{netd}, plugins...) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w (run make build first)", err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			continue
		}
		files = append(files, ociimage.File{Path: "/usr/local/bin/" + filepath.Base(p), Mode: 0o755, Source: p})
	}
	if len(files) < 2 {
		return fmt.Errorf("no berth plugins in %s (run make build first)", binDir)
	}
	files = append(files, ociimage.File{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777})
	img := ociimage.Image{
		Name:       name,
		Files:      files,
		Entrypoint: []string{"/usr/local/bin/netd"},
		Labels: map[string]string{
			"org.opencontainers.image.title":  "berth",
			"org.opencontainers.image.source": "https://github.com/berthnet/berth",
		},
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := img.WriteFile(out); err != nil {
		return err
	}
	fmt.Printf("wrote %s (%s, %d files)\n", out, name, len(files))
	return nil
}
