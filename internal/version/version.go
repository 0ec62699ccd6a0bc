// Package version is the version of berth's binaries, for `netd version`
// and `runner version`.
package version

import (
	"runtime/debug"
	"strings"
)

// Version is set at build time: make build passes
// -ldflags "-X github.com/berthnet/berth/internal/version.Version=$(VERSION)".
var Version = "dev"

// String is Version, or, when the binary was built without make (go
// build, go install), what the Go toolchain recorded: the module version
// and the VCS revision.
func String() string {
	if Version != "dev" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return Version
	}
	return fromBuildInfo(info)
}

// fromBuildInfo is "dev" qualified by what info knows: the module version
// (go install module@v1.2.3) or the commit (go build in a checkout).
func fromBuildInfo(info *debug.BuildInfo) string {
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	rev := settings["vcs.revision"]
	if rev == "" {
		return Version
	}
	var b strings.Builder
	b.WriteString("dev-")
	b.WriteString(rev[:min(12, len(rev))])
	if settings["vcs.modified"] == "true" {
		b.WriteString("-dirty")
	}
	return b.String()
}
