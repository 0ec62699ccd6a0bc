// Package cli is the docker-like command line of the runner: it parses
// flags, prints tables and help, and calls package runner.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/berthnet/berth/internal/version"
	"github.com/berthnet/berth/runner"
	"github.com/berthnet/berth/runner/sandbox"
)

// command is one subcommand.
type command struct {
	name    string
	args    string // usage after the flags
	summary string
	help    string
	example string
	// commandArgs: flags stop at the first argument, which starts the
	// container's command (run, exec).
	commandArgs bool
	setup       func(fs *pflag.FlagSet) func(ctx context.Context, rt *runner.Runtime, args []string) (int, error)
}

// globals are the flags every command takes.
type globals struct {
	stateDir, confDir, binDirs, cgroupParent string
	debug                                    bool
}

var defaultGlobals = globals{
	stateDir:     runner.DefaultStateDir,
	confDir:      runner.DefaultCNIConfDir,
	binDirs:      runner.DefaultCNIBinDirs,
	cgroupParent: runner.DefaultCgroupParent,
}

// register adds the global flags to fs with g's current values as their
// defaults, so that values given before the command name survive.
func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.stateDir, "state-dir", g.stateDir, "where containers' state, logs and layers live (one per node)")
	fs.StringVar(&g.confDir, "cni-conf-dir", g.confDir, "directory of CNI network configurations (.conflist, .conf, .json)")
	fs.StringVar(&g.binDirs, "cni-bin-dir", g.binDirs, "colon-separated directories searched for CNI plugins")
	fs.StringVar(&g.cgroupParent, "cgroup-parent", g.cgroupParent, "cgroup under which each container gets its own")
	fs.BoolVar(&g.debug, "debug", g.debug, "log what the runner does")
}

func (g *globals) config() runner.Config {
	var dirs []string
	for _, d := range strings.Split(g.binDirs, ":") {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	return runner.Config{StateDir: g.stateDir, CNIConfDir: g.confDir, CNIBinDirs: dirs, CgroupParent: g.cgroupParent, Debug: g.debug}
}

const globalHelp = `runner runs containers and attaches them to CNI networks through libcni,
as containerd or CRI-O would. Run it in the network namespace of the node:
CNI plugins create bridges and iptables rules where they are executed.

Usage: runner [global flags] COMMAND [flags] [args]

Commands:
%s
Global flags (accepted before or after COMMAND):
%s
Run 'runner COMMAND --help' for a command's flags and an example.
`

// Main runs the command line args (without the program name) and
// returns the exit status.
func Main(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case runner.InitCommand:
			sandbox.Main() // never returns
		case runner.SupervisorCommand:
			if len(args) != 2 {
				return 125
			}
			return runner.SupervisorMain(args[1])
		}
	}
	g := defaultGlobals
	top := pflag.NewFlagSet("runner", pflag.ContinueOnError)
	top.SetInterspersed(false)
	top.SetOutput(io.Discard)
	g.register(top)
	help := top.BoolP("help", "h", false, "")
	showVersion := top.Bool("version", false, "")
	cmds := commands()
	usage := func(w io.Writer) {
		var list strings.Builder
		for _, c := range cmds {
			fmt.Fprintf(&list, "  %-9s %s\n", c.name, c.summary)
		}
		fmt.Fprintf(&list, "  %-9s %s\n", "version", "print the runner's version (also --version)")
		fmt.Fprintf(w, globalHelp, list.String(), globalFlagUsages())
	}
	if err := top.Parse(args); err != nil {
		fmt.Fprintf(os.Stderr, "runner: %v\n\n", err)
		usage(os.Stderr)
		return 125
	}
	rest := top.Args()
	if *showVersion || len(rest) > 0 && rest[0] == "version" {
		// No runtime: the version needs no state dir, root or cgroups.
		fmt.Println(version.Line("runner"))
		return 0
	}
	if *help || len(rest) == 0 || rest[0] == "help" && len(rest) == 1 {
		usage(os.Stdout)
		if len(rest) == 0 && !*help {
			return 125
		}
		return 0
	}
	if rest[0] == "help" {
		rest = []string{rest[1], "--help"}
	}
	var cmd *command
	for i := range cmds {
		if cmds[i].name == rest[0] {
			cmd = &cmds[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(os.Stderr, "runner: unknown command %q (see runner --help)\n", rest[0])
		return 125
	}
	return cmd.main(&g, rest[1:])
}

func (c *command) main(g *globals, args []string) int {
	fs := pflag.NewFlagSet("runner "+c.name, pflag.ContinueOnError)
	fs.SetInterspersed(!c.commandArgs)
	fs.SetOutput(io.Discard)
	run := c.setup(fs)
	local := fs.FlagUsages()
	g.register(fs)
	help := fs.BoolP("help", "h", false, "show this help")
	printHelp := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: runner %s [flags] %s\n\n%s\n", c.name, c.args, strings.TrimSpace(c.help))
		if local != "" {
			fmt.Fprintf(w, "\nFlags:\n%s", local)
		}
		fmt.Fprintf(w, "\nGlobal flags:\n%s", globalFlagUsages())
		if c.example != "" {
			fmt.Fprintf(w, "\nExample:\n%s\n", strings.TrimRight(c.example, "\n"))
		}
	}
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(os.Stderr, "runner %s: %v\n\n", c.name, err)
		printHelp(os.Stderr)
		return 125
	}
	if *help {
		printHelp(os.Stdout)
		return 0
	}
	cfg := g.config()
	log := runner.NewLogger(os.Stderr, g.debug)
	rt, err := runner.New(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runner: %v\n", err)
		return 125
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if c.commandArgs {
		// run and exec forward signals to the container themselves.
		stop()
		ctx = context.Background()
	}
	code, err := run(ctx, rt, fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "runner %s: %v\n", c.name, err)
		var coder interface{ ExitCode() int }
		if errors.As(err, &coder) {
			return coder.ExitCode()
		}
		if code == 0 {
			code = 125
		}
	}
	return code
}

func globalFlagUsages() string {
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	g := defaultGlobals
	g.register(fs)
	return fs.FlagUsages()
}

func commands() []command {
	return []command{runCmd(), psCmd(), execCmd(), logsCmd(), stopCmd(), rmCmd(), inspectCmd(), networksCmd(), gcCmd()}
}
