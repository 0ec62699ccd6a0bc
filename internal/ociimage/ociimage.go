// Package ociimage writes a container image as an OCI image layout tar
// (https://github.com/opencontainers/image-spec/blob/main/image-layout.md):
// one uncompressed layer made of the files given, the image config and
// manifest, and an index naming the image. `ctr images import` (containerd),
// `podman load` and `skopeo` read it; no container engine or registry is
// needed to build it.
//
// The output is reproducible: entries are sorted, owned by root and dated
// at the Unix epoch, so the same files give the same image digest.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// Media types of the OCI image spec v1.
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// Annotations on the index entry that name the image. containerd takes
// the full reference from its own annotation; other tools read the OCI
// one.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// File is one entry of the image's filesystem.
type File struct {
	Path string      // absolute path in the image, e.g. /usr/local/bin/netd
	Mode fs.FileMode // permission bits; fs.ModeDir for a directory, fs.ModeSymlink for a link
	// Exactly one of these for a regular file: the content, or a file on
	// this machine to copy.
	Data   []byte
	Source string
	Link   string // a symlink's target
}

// Image describes the image to write.
type Image struct {
	// Name is the full reference the runtime will know the image by,
	// e.g. docker.io/berthnet/berth:dev (what a pod's image normalises to).
	Name       string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string // default: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	WorkingDir string
	Labels     map[string]string
}

// epoch is the modification time of every entry, for reproducible images.
var epoch = time.Unix(0, 0).UTC()

// WriteFile writes the image as an OCI layout tar to path, replacing it
// atomically.
func (img *Image) WriteFile(path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	err = img.Write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ociimage: writing %s: %w", path, err)
	}
	return nil
}

// Write writes the image as an OCI layout tar to w.
func (img *Image) Write(w io.Writer) error {
	if img.Name == "" || !strings.Contains(img.Name, ":") && !strings.Contains(img.Name, "@") {
		return fmt.Errorf("ociimage: image name %q needs a tag, e.g. example.com/app:1", img.Name)
	}
	layer, err := img.layer()
	if err != nil {
		return err
	}
	layerDesc := describe(mediaTypeLayer, layer)

	env := img.Env
	if env == nil {
		env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": img.Entrypoint,
			"Cmd":        img.Cmd,
			"Env":        env,
			"WorkingDir": img.WorkingDir,
			"Labels":     img.Labels,
		},
		// Uncompressed, so the layer's digest is its diff ID.
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	})
	if err != nil {
		return err
	}
	configDesc := describe(mediaTypeConfig, config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        configDesc,
		"layers":        []descriptor{layerDesc},
	})
	if err != nil {
		return err
	}
	manifestDesc := describe(mediaTypeManifest, manifest)
	manifestDesc.Annotations = map[string]string{
		annotationContainerdName: img.Name,
		annotationRefName:        refName(img.Name),
	}
	manifestDesc.Platform = &platform{Architecture: "amd64", OS: "linux"}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeIndex,
		"manifests":     []descriptor{manifestDesc},
	})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(configDesc), config},
		{blobPath(manifestDesc), manifest},
		{blobPath(layerDesc), layer},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// refName is the tag part of name, what the OCI ref.name annotation holds.
func refName(name string) string {
	if i := strings.LastIndexAny(name, ":@"); i >= 0 && !strings.Contains(name[i:], "/") {
		return name[i+1:]
	}
	return name
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

func describe(mediaType string, blob []byte) descriptor {
	sum := sha256.Sum256(blob)
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(blob))}
}

func blobPath(d descriptor) string {
	return "blobs/sha256/" + strings.TrimPrefix(d.Digest, "sha256:")
}

// layer is the tar of the image's files, with every parent directory.
func (img *Image) layer() ([]byte, error) {
	files := map[string]File{}
	for _, f := range img.Files {
		p := path.Clean(f.Path)
		if !path.IsAbs(p) || p == "/" {
			return nil, fmt.Errorf("ociimage: file path %q must be absolute and not /", f.Path)
		}
		if _, dup := files[p]; dup {
			return nil, fmt.Errorf("ociimage: %s is given twice", p)
		}
		f.Path = p
		files[p] = f
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := files[dir]; !ok {
				files[dir] = File{Path: dir, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths) // a directory sorts before its contents

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := files[p]
		if err := writeEntry(tw, f); err != nil {
			return nil, fmt.Errorf("ociimage: %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeEntry(tw *tar.Writer, f File) error {
	h := &tar.Header{Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(f.Mode.Perm()), ModTime: epoch, Format: tar.FormatPAX}
	if f.Mode&fs.ModeSticky != 0 {
		h.Mode |= 0o1000
	}
	switch {
	case f.Mode.IsDir():
		h.Typeflag = tar.TypeDir
		h.Name += "/"
		return tw.WriteHeader(h)
	case f.Mode&fs.ModeSymlink != 0:
		if f.Link == "" {
			return errors.New("symlink without a target")
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
		return tw.WriteHeader(h)
	}
	data := f.Data
	if f.Source != "" {
		if data != nil {
			return errors.New("both Data and Source given")
		}
		var err error
		if data, err = os.ReadFile(f.Source); err != nil {
			return err
		}
	}
	h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
