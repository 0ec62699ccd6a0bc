// Package cniplugin is the entry point every berth CNI plugin shares: it
// wires the plugin's operations into skel, turns berth's typed errors into
// CNI error JSON with the right code, and answers --help.
package cniplugin

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
)

// Plugin describes one executable.
type Plugin struct {
	Name  string // e.g. "berth-bridge"
	About string // one line: what it does
	Help  string // the configuration reference printed by --help
	Funcs skel.CNIFuncs
}

// Main runs p as a CNI plugin and never returns.
func Main(p Plugin) {
	if len(os.Args) > 1 && (os.Args[1] == "--help" || os.Args[1] == "-h" || os.Args[1] == "help") {
		fmt.Printf("%s: %s\n\n%s\n", p.Name, p.About, p.Help)
		fmt.Printf("CNI versions: %v. Runtimes exec this binary with CNI_COMMAND=ADD|DEL|CHECK|GC|STATUS|VERSION\nand the network configuration on stdin (https://www.cni.dev/docs/spec/).\n", conf.SupportedVersions)
		os.Exit(0)
	}
	funcs := skel.CNIFuncs{
		Add:    withCodes(p.Funcs.Add),
		Del:    withCodes(p.Funcs.Del),
		Check:  withCodes(p.Funcs.Check),
		GC:     withCodes(p.Funcs.GC),
		Status: withCodes(p.Funcs.Status),
	}
	skel.PluginMainFuncs(funcs, version.PluginSupports(conf.SupportedVersions...), p.Name+": "+p.About)
}

// withCodes converts the errors of f into CNI errors carrying the code of
// their cnierr.Kind, so skel prints them as they are.
func withCodes(f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	if f == nil {
		return nil
	}
	return func(args *skel.CmdArgs) error {
		if err := f(args); err != nil {
			return cnierr.To(err)
		}
		return nil
	}
}
