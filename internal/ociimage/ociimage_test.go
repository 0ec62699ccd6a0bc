package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTar returns the files of a tar by name.
func readTar(t *testing.T, data []byte) (map[string][]byte, []*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	var headers []*tar.Header
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, headers
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
		headers = append(headers, h)
	}
}

// The layout is what containerd's importer reads: an index naming the
// image, a manifest, a config whose diff ID is the layer's digest, and
// blobs stored under their digests.
func TestLayout(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tool")
	writeFile(t, src, "#!/bin/sh\necho hi\n")
	img := Image{
		Name:       "example.com/berth/test:1",
		Entrypoint: []string{"/usr/bin/tool"},
		Files: []File{
			{Path: "/usr/bin/tool", Mode: 0o755, Source: src},
			{Path: "/etc/motd", Mode: 0o644, Data: []byte("hello\n")},
			{Path: "/bin/sh", Mode: fs.ModeSymlink | 0o777, Link: "busybox"},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		},
	}
	var buf bytes.Buffer
	if err := img.Write(&buf); err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, buf.Bytes())
	for name, data := range files {
		if digest, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && digest != "" {
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != digest {
				t.Errorf("blob %s does not match its digest", name)
			}
		}
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	mustJSON(t, files["index.json"], &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations[annotationContainerdName] != img.Name ||
		index.Manifests[0].Annotations[annotationRefName] != "1" {
		t.Fatalf("index does not name the image: %s", files["index.json"])
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	mustJSON(t, files[blobPath(index.Manifests[0])], &manifest)
	var config struct {
		Config struct{ Entrypoint []string } `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	mustJSON(t, files[blobPath(manifest.Config)], &config)
	if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("the layer's diff ID is not its digest: %+v %+v", manifest, config)
	}
	if strings.Join(config.Config.Entrypoint, " ") != "/usr/bin/tool" {
		t.Errorf("entrypoint %v", config.Config.Entrypoint)
	}

	layer, headers := readTar(t, files[blobPath(manifest.Layers[0])])
	var names []string
	for _, h := range headers {
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d, time %v; want root and the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	want := "bin/ bin/sh etc/ etc/motd tmp/ usr/ usr/bin/ usr/bin/tool"
	if strings.Join(names, " ") != want {
		t.Errorf("layer entries %q, want %q (parents first)", strings.Join(names, " "), want)
	}
	if string(layer["usr/bin/tool"]) != "#!/bin/sh\necho hi\n" {
		t.Errorf("tool content %q", layer["usr/bin/tool"])
	}
	for _, h := range headers {
		switch h.Name {
		case "usr/bin/tool":
			if h.Mode != 0o755 {
				t.Errorf("tool mode %o", h.Mode)
			}
		case "tmp/":
			if h.Mode != 0o1777 {
				t.Errorf("tmp mode %o, want sticky 1777", h.Mode)
			}
		case "bin/sh":
			if h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
				t.Errorf("bin/sh is not a symlink to busybox: %+v", h)
			}
		}
	}

	// Reproducible: the same files give the same bytes.
	var again bytes.Buffer
	if err := img.Write(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two writes of the same image differ")
	}
}

func TestRefused(t *testing.T) {
	for _, img := range []Image{
		{Name: "no-tag", Files: []File{{Path: "/a", Mode: 0o644}}},
		{Name: "x/y:1", Files: []File{{Path: "relative", Mode: 0o644}}},
		{Name: "x/y:1", Files: []File{{Path: "/a", Mode: 0o644}, {Path: "/a/", Mode: 0o644}}},
		{Name: "x/y:1", Files: []File{{Path: "/missing", Mode: 0o644, Source: "/nonexistent/file"}}},
	} {
		if err := img.Write(io.Discard); err == nil {
			t.Errorf("%+v was written", img)
		}
	}
}

func mustJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%v: %s", err, data)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
}
