package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/berthnet/berth/runner"
	"github.com/berthnet/berth/runner/sandbox"
)

type runFunc = func(ctx context.Context, rt *runner.Runtime, args []string) (int, error)

func runCmd() command {
	return command{
		name:        "run",
		args:        "[--] CMD [ARGS...]",
		summary:     "create and start a container",
		commandArgs: true,
		help: `Runs CMD as pid 1 of a new container: own pid, network, mount, uts, ipc
and cgroup namespaces, a fresh /proc, a minimal /dev and a /tmp, on an
overlay of --rootfs (never written to) or of a busybox tree the runner
builds from the host's static busybox. --net attaches it to a CNI
network from --cni-conf-dir (see 'runner networks'). Without -d the
runner waits for CMD and exits with its status.`,
		example: `  runner run --net bridge -- ping -c 3 10.88.0.1
  runner run -d --name web --net bridge -p 8080:80 -- httpd -f -p 80
  runner run -d --net bridge -P --expose 80 --memory 64m --cpus 0.5 -- httpd -f -p 80
  runner run -it --net none -- sh`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var (
				spec                   runner.Spec
				ports, expose          []string
				memory, cpus           string
				detach, interactive, t bool
			)
			fs.StringVar(&spec.Network, "net", "none", "network: a CNI network name, none (loopback only) or host (the node's)")
			fs.StringVar(&spec.Name, "name", "", "container name (default: the short id)")
			fs.StringVar(&spec.Hostname, "hostname", "", "host name inside the container (default: the name)")
			fs.StringArrayVarP(&ports, "publish", "p", nil, "publish a port: [hostIP:][hostPort:]containerPort[/tcp|udp|sctp], e.g. -p 8080:80 (every address, both IP families where the network has both), -p 127.0.0.1:8080:80, -p [::]:8080:80 (IPv6 only) (repeatable)")
			fs.BoolVarP(&spec.PublishAll, "publish-all", "P", false, "publish every --expose port on a free host port in 49153-65535")
			fs.StringArrayVar(&expose, "expose", nil, "a port the container serves, e.g. --expose 80 (repeatable; used by -P)")
			fs.StringArrayVarP(&spec.Env, "env", "e", nil, "set KEY=VALUE in the container (KEY alone copies the runner's value; repeatable)")
			fs.StringVarP(&memory, "memory", "m", "", "memory limit, e.g. 64m or 1g; exceeding it OOM-kills the container")
			fs.StringVar(&cpus, "cpus", "", "CPU quota in CPUs, e.g. 0.5")
			fs.Int64Var(&spec.Resources.PidsLimit, "pids-limit", 0, "maximum number of processes (0: unlimited)")
			fs.BoolVarP(&detach, "detach", "d", false, "run in the background under a supervisor; print the id")
			fs.BoolVar(&spec.AutoRemove, "rm", false, "remove the container when it exits")
			fs.StringVar(&spec.Rootfs, "rootfs", "", "root filesystem directory (default: busybox tree)")
			fs.BoolVarP(&interactive, "interactive", "i", false, "keep stdin attached to the container")
			fs.BoolVarP(&t, "tty", "t", false, "give the container a pseudo-terminal (with -i, stdin must be a terminal)")
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				spec.Args, spec.TTY = args, t
				for _, p := range ports {
					pm, err := runner.ParsePort(p)
					if err != nil {
						return 125, err
					}
					spec.Ports = append(spec.Ports, pm)
				}
				for _, e := range expose {
					pm, err := runner.ParseExpose(e)
					if err != nil {
						return 125, err
					}
					spec.Expose = append(spec.Expose, pm)
				}
				var err error
				if memory != "" {
					if spec.Resources.MemoryBytes, err = runner.ParseMemory(memory); err != nil {
						return 125, err
					}
				}
				if cpus != "" {
					if spec.Resources.CPUs, err = runner.ParseCPUs(cpus); err != nil {
						return 125, err
					}
				}
				if spec.Resources.PidsLimit < 0 {
					return 125, fmt.Errorf("--pids-limit %d: must be 0 (unlimited) or more", spec.Resources.PidsLimit)
				}
				if spec.Rootfs != "" {
					if spec.Rootfs, err = filepath.Abs(spec.Rootfs); err != nil {
						return 125, err
					}
				}
				if detach {
					if interactive || t {
						return 125, fmt.Errorf("-d cannot be combined with -i or -t: a detached container has no terminal to attach (use runner exec -it later)")
					}
					c, err := rt.RunDetached(ctx, spec)
					if err != nil {
						return 125, err
					}
					fmt.Println(c.ID)
					return 0, nil
				}
				return runForeground(ctx, rt, spec, interactive)
			}
		},
	}
}

func runForeground(ctx context.Context, rt *runner.Runtime, spec runner.Spec, interactive bool) (int, error) {
	a, err := newAttachment(interactive, spec.TTY)
	if err != nil {
		return 125, err
	}
	defer a.close()
	c, p, err := rt.Run(ctx, spec, a.stdio())
	if err != nil {
		return 125, err
	}
	a.attach(p)
	code, err := rt.Wait(ctx, c, p)
	a.detach()
	return code, err
}

func psCmd() command {
	return command{
		name:    "ps",
		summary: "list containers",
		help:    "Lists running containers (all with -a): id, name, status, network, IPs and published ports.",
		example: "  runner ps -a",
		setup: func(fs *pflag.FlagSet) runFunc {
			all := fs.BoolP("all", "a", false, "also list stopped and dead containers")
			quiet := fs.BoolP("quiet", "q", false, "print only ids")
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				cs, err := rt.List(*all)
				if err != nil {
					return 125, err
				}
				if *quiet {
					for _, c := range cs {
						fmt.Println(c.ID)
					}
					return 0, nil
				}
				now := time.Now()
				w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
				fmt.Fprintln(w, "CONTAINER ID\tNAME\tSTATUS\tNETWORK\tIPS\tPORTS\tCOMMAND")
				for _, c := range cs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", runner.ShortID(c.ID), c.Name, c.StatusText(now),
						c.Spec.Network, dash(strings.Join(c.IPs(), ",")), dash(strings.Join(c.PublishedPorts(), ",")), quoteCmd(c.Spec.Args))
				}
				return 0, w.Flush()
			}
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func quoteCmd(args []string) string {
	s := strings.Join(args, " ")
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return fmt.Sprintf("%q", s)
}

func execCmd() command {
	return command{
		name:        "exec",
		args:        "NAME CMD [ARGS...]",
		summary:     "run a command in a running container",
		commandArgs: true,
		help: `Runs CMD inside a running container: in all its namespaces (network, pid,
mount, uts, ipc, cgroup) and cgroups, with its environment. Exits with
CMD's status.`,
		example: `  runner exec web wget -qO- http://127.0.0.1/
  runner exec -it web sh`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var spec runner.ExecSpec
			interactive := fs.BoolP("interactive", "i", false, "keep stdin attached")
			tty := fs.BoolP("tty", "t", false, "give the command a pseudo-terminal (with -i, stdin must be a terminal)")
			fs.StringArrayVarP(&spec.Env, "env", "e", nil, "set KEY=VALUE for the command (repeatable)")
			fs.StringVarP(&spec.Cwd, "workdir", "w", "", "working directory inside the container (default /)")
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				if len(args) < 2 {
					return 125, fmt.Errorf("need a container and a command: runner exec NAME CMD [ARGS...]")
				}
				spec.Args = args[1:]
				a, err := newAttachment(*interactive, *tty)
				if err != nil {
					return 125, err
				}
				defer a.close()
				p, err := rt.Exec(ctx, args[0], spec, a.stdio())
				if err != nil {
					var ce *sandbox.CommandError
					if errors.As(err, &ce) {
						return ce.Code(), err
					}
					return 125, err
				}
				a.attach(p)
				code := p.Wait()
				a.detach()
				return code, nil
			}
		},
	}
}

func logsCmd() command {
	return command{
		name:    "logs",
		args:    "NAME",
		summary: "print the output of a detached container",
		help:    "Prints what a detached (-d) container wrote to stdout and stderr.",
		example: "  runner logs -f web",
		setup: func(fs *pflag.FlagSet) runFunc {
			follow := fs.BoolP("follow", "f", false, "keep printing new output until the container exits")
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				if len(args) != 1 {
					return 125, fmt.Errorf("need exactly one container: runner logs [-f] NAME")
				}
				return 0, rt.Logs(ctx, args[0], *follow, os.Stdout)
			}
		},
	}
}

func stopCmd() command {
	return command{
		name:    "stop",
		args:    "NAME...",
		summary: "stop containers",
		help: `Sends SIGTERM to each container's pid 1, SIGKILL after --time, and waits
until the container's network attachment, namespace and cgroups are
released. The container stays listed by 'ps -a' until 'rm'.`,
		example: "  runner stop -t 2 web",
		setup: func(fs *pflag.FlagSet) runFunc {
			timeout := fs.IntP("time", "t", 10, "seconds to wait after SIGTERM before SIGKILL")
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				return eachContainer(args, "stop", func(name string) error {
					return rt.Stop(ctx, name, time.Duration(*timeout)*time.Second)
				})
			}
		},
	}
}

func rmCmd() command {
	return command{
		name:    "rm",
		args:    "NAME...",
		summary: "remove containers",
		help: `Removes containers: CNI DEL, network namespace, cgroups, overlay layers,
logs and state. A running container needs -f, which kills it. Also
cleans up containers whose supervisor died.`,
		example: "  runner rm -f web",
		setup: func(fs *pflag.FlagSet) runFunc {
			force := fs.BoolP("force", "f", false, "kill running containers first")
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				return eachContainer(args, "rm", func(name string) error {
					return rt.Remove(ctx, name, *force)
				})
			}
		},
	}
}

func eachContainer(args []string, cmd string, f func(string) error) (int, error) {
	if len(args) == 0 {
		return 125, fmt.Errorf("name at least one container: runner %s NAME...", cmd)
	}
	code := 0
	for _, name := range args {
		if err := f(name); err != nil {
			fmt.Fprintf(os.Stderr, "runner %s: %v\n", cmd, err)
			code = 1
			continue
		}
		fmt.Println(name)
	}
	return code, nil
}

// inspected is what inspect prints: the record plus what is observed.
type inspected struct {
	*runner.Container
	Phase  runner.Phase `json:"phase"`
	Status string       `json:"status"`
	// The container's addresses per family and its published ports per
	// family (a port without host address is published on both).
	IPv4           []string `json:"ipv4,omitempty"`
	IPv6           []string `json:"ipv6,omitempty"`
	PublishedPorts []string `json:"publishedPorts,omitempty"`
}

func inspectCmd() command {
	return command{
		name:    "inspect",
		args:    "NAME...",
		summary: "show containers' details as JSON",
		help: `Prints a JSON array with each container's record: spec, pid, network
namespace path, CNI result, cgroups, exit status, and its addresses and
published ports per IP family ("ipv4", "ipv6", "publishedPorts").`,
		example: "  runner inspect web",
		setup: func(fs *pflag.FlagSet) runFunc {
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				if len(args) == 0 {
					return 125, fmt.Errorf("name at least one container: runner inspect NAME...")
				}
				var out []inspected
				for _, name := range args {
					c, err := rt.Get(name)
					if err != nil {
						return 1, err
					}
					out = append(out, inspected{Container: c, Phase: c.Phase(), Status: c.StatusText(time.Now()),
						IPv4: c.IPsOf(false), IPv6: c.IPsOf(true), PublishedPorts: c.PublishedPorts()})
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return 0, enc.Encode(out)
			}
		},
	}
}

func networksCmd() command {
	return command{
		name:    "networks",
		summary: "list the CNI networks run --net can use",
		help: `Lists the network configurations in --cni-conf-dir, in the order libcni
reads them, with their plugins and whether they can publish ports.
Files that cannot be used are listed with the reason.`,
		example: "  runner networks --cni-conf-dir /etc/cni/net.d",
		setup: func(fs *pflag.FlagSet) runFunc {
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				nets, err := rt.Networks()
				if err != nil {
					return 125, err
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
				fmt.Fprintln(w, "NAME\tPLUGINS\tCNI VERSION\tPORTS\tFILE")
				for _, n := range nets {
					ports := "no"
					if n.PortMappings {
						ports = "yes"
					}
					if n.Err != "" {
						fmt.Fprintf(w, "%s\t(unusable: %s)\t\t\t%s\n", n.Name, n.Err, n.File)
						continue
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", n.Name, strings.Join(n.Plugins, ","), n.CNIVersion, ports, n.File)
				}
				return 0, w.Flush()
			}
		},
	}
}

func gcCmd() command {
	return command{
		name:    "gc",
		summary: "clean up after dead containers and CNI garbage",
		help: `Cleans up containers whose supervisor died, then runs CNI GC on every
network with the attachments of the live containers as the valid ones:
libcni deletes cached attachments that are not valid, and plugins
(cniVersion 1.1.0 and later) release anything else they hold. Prints
each container it cleaned up with what it released, and each network
it ran CNI GC on.`,
		example: "  runner gc",
		setup: func(fs *pflag.FlagSet) runFunc {
			return func(ctx context.Context, rt *runner.Runtime, args []string) (int, error) {
				rep, err := rt.GC(ctx)
				printGC(rep)
				return 0, err
			}
		},
	}
}

func printGC(rep *runner.GCReport) {
	if len(rep.Orphans) == 0 {
		fmt.Println("no container with a dead supervisor")
	}
	for _, o := range rep.Orphans {
		fmt.Printf("%s: its supervisor (pid %d) died before the container ended; exit status unknown\n", o.Name, o.SupervisorPid)
		if len(o.Released) > 0 {
			fmt.Printf("%s: released: %s\n", o.Name, strings.Join(o.Released, ", "))
		}
	}
	for _, n := range rep.Networks {
		fmt.Printf("network %s: CNI GC done, %d live attachment(s) kept\n", n.Network, n.Kept)
	}
}
