// Package attachments is where berth's plugins record a network's
// container attachments on a node: one file per attachment in
// <stateDir>/networks/<network>/ (Dir), written before ADD changes
// anything and removed once DEL undid it all. <key>.json is a live
// attachment; DEL and GC first rename it to <key>.leaving, which stays
// until everything of the attachment is gone, so that a DEL killed
// midway is repeated from it. plugins/attach writes the records; netd
// leave reads them to refuse while containers are attached.
package attachments

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The extensions of a record: a live attachment, and one being removed.
const (
	ExtLive    = ".json"
	ExtLeaving = ".leaving"
)

// Dir is the directory of network's records under stateDir.
func Dir(stateDir, network string) string {
	return filepath.Join(stateDir, "networks", network)
}

// Attachment is whose attachment a record is.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Leaving: its DEL (or GC) started and has not finished: it is
	// running, or it was interrupted and the runtime repeats it.
	Leaving bool `json:"-"`
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// List reads network's records under stateDir, live and leaving; none
// when the directory does not exist. A record that cannot be read as one
// (foreign junk) is skipped.
func List(stateDir, network string) ([]Attachment, error) {
	entries, err := os.ReadDir(Dir(stateDir, network))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the attachments of network %s: %w", network, err)
	}
	var out []Attachment
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if ext != ExtLive && ext != ExtLeaving || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(Dir(stateDir, network), e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("reading the attachments of network %s: %w", network, err)
		}
		var a Attachment
		if json.Unmarshal(data, &a) != nil || a.ContainerID == "" {
			continue
		}
		a.Leaving = ext == ExtLeaving
		out = append(out, a)
	}
	return out, nil
}
