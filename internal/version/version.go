// Package version is the build's version, shared by berth's binaries
// (`runner version`, `netd version`).
//
// The Makefile stamps it: go build -ldflags "-X
// github.com/berthnet/berth/internal/version.Version=$(VERSION)", where
// VERSION defaults to `git describe --tags --always --dirty`. A binary
// built without the stamp (go build, go install) reports the module
// version and VCS revision Go recorded, or "devel".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set by the linker (-X); empty in an unstamped build.
var Version string

// String is the version of this binary, e.g. "v0.3.0-12-gabc1234".
func String() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromBuildInfo(info)
}

// fromBuildInfo is what the Go toolchain recorded: the module version (go
// install module@v1.2.3), else "devel" qualified by the commit (go build
// in a checkout), else "devel".
func fromBuildInfo(info *debug.BuildInfo) string {
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + rev[:min(12, len(rev))] + dirty
}

// Line is what `NAME version` prints: the name, the version and the Go
// toolchain and platform it was built with.
func Line(name string) string {
	return fmt.Sprintf("%s %s (%s %s/%s)", name, String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
