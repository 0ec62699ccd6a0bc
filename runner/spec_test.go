package runner

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    PortMapping
		wantErr string
	}{
		{in: "8080:80", want: PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "80", want: PortMapping{ContainerPort: 80, Protocol: "tcp"}},
		{in: ":80/udp", want: PortMapping{ContainerPort: 80, Protocol: "udp"}},
		{in: "127.0.0.1:53:53/udp", want: PortMapping{HostIP: "127.0.0.1", HostPort: 53, ContainerPort: 53, Protocol: "udp"}},
		{in: "10.0.0.1::80", want: PortMapping{HostIP: "10.0.0.1", ContainerPort: 80, Protocol: "tcp"}},
		{in: "9000:90/sctp", want: PortMapping{HostPort: 9000, ContainerPort: 90, Protocol: "sctp"}},
		{in: "8080:80/icmp", wantErr: `protocol "icmp"`},
		{in: "0:80", wantErr: "host port"},
		{in: "8080:70000", wantErr: "container port"},
		{in: "x:80", wantErr: "host port"},
		{in: "fe80::1:80:80", wantErr: "expected [hostIP:]"},
		{in: "300.1.1.1:80:80", wantErr: "not an IPv4 address"},
		{in: "", wantErr: "container port"},
		{in: "[::]:8080:80", want: PortMapping{HostIP: "::", HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "[2001:DB8::1]::80/udp", want: PortMapping{HostIP: "2001:db8::1", ContainerPort: 80, Protocol: "udp"}},
		{in: "[2001:db8::1]:80", want: PortMapping{HostIP: "2001:db8::1", ContainerPort: 80, Protocol: "tcp"}},
		{in: "0.0.0.0:8080:80", want: PortMapping{HostIP: "0.0.0.0", HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "[::1]:8080:80", wantErr: "::1 cannot be published"},
		{in: "[10.0.0.1]:8080:80", wantErr: "not an IPv6 address"},
		{in: "[::ffff:10.0.0.1]:8080:80", wantErr: "not an IPv6 address"},
		{in: "[::]8080:80", wantErr: `no "]:"`},
		{in: "[::]:1:2:3", wantErr: "expected [hostIP:]"},
	} {
		got, err := ParsePort(tc.in)
		if tc.wantErr != "" {
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParsePort(%q) = %v, %v; want error with %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// A mapping is shown once per family it is published in.
func TestPublished(t *testing.T) {
	p := PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}
	for _, tc := range []struct {
		p          PortMapping
		ipv4, ipv6 bool
		want       string
	}{
		{p, true, true, "0.0.0.0:8080->80/tcp [::]:8080->80/tcp"},
		{p, true, false, "0.0.0.0:8080->80/tcp"},
		{p, false, true, "[::]:8080->80/tcp"},
		{PortMapping{HostIP: "2001:db8::1", HostPort: 53, ContainerPort: 53, Protocol: "udp"}, true, true, "[2001:db8::1]:53->53/udp"},
		{PortMapping{HostIP: "127.0.0.1", HostPort: 53, ContainerPort: 53, Protocol: "udp"}, true, true, "127.0.0.1:53->53/udp"},
	} {
		if got := strings.Join(tc.p.Published(tc.ipv4, tc.ipv6), " "); got != tc.want {
			t.Errorf("%+v on IPv4 %v, IPv6 %v: %q, want %q", tc.p, tc.ipv4, tc.ipv6, got, tc.want)
		}
	}
}

func TestParseExpose(t *testing.T) {
	if got, err := ParseExpose("53/udp"); err != nil || got != (PortMapping{ContainerPort: 53, Protocol: "udp"}) {
		t.Errorf("ParseExpose(53/udp) = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "http", "0", "8080:80"} {
		if _, err := ParseExpose(bad); err == nil {
			t.Errorf("ParseExpose(%q) accepted", bad)
		}
	}
}

func TestParseMemory(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"64m", 64 << 20, true}, {"64M", 64 << 20, true}, {"64mb", 64 << 20, true}, {"64MiB", 64 << 20, true},
		{"1g", 1 << 30, true}, {"8192k", 8 << 20, true}, {"10485760", 10 << 20, true}, {"10485760b", 10 << 20, true},
		{"5m", 0, false}, {"1k", 0, false}, {"12x", 0, false}, {"-1m", 0, false}, {"", 0, false}, {"1.5g", 0, false},
		{"99999999999999999999g", 0, false}, {"9999999999999g", 0, false},
	} {
		got, err := ParseMemory(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseCPUs(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"0.5", true}, {"1", true}, {"0.01", true}, {"0", false}, {"-1", false}, {"NaN", false}, {"lots", false}, {"0.001", false}, {"100000", false},
	} {
		if _, err := ParseCPUs(tc.in); tc.ok != (err == nil) {
			t.Errorf("ParseCPUs(%q): err %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	base := func() Spec { return Spec{Network: NetNone, Args: []string{"true"}} }
	for _, tc := range []struct {
		name    string
		mod     func(*Spec)
		wantErr string
	}{
		{"ok", func(*Spec) {}, ""},
		{"no command", func(s *Spec) { s.Args = nil }, "no command"},
		{"bad name", func(s *Spec) { s.Name = "-x" }, "--name"},
		{"bad hostname", func(s *Spec) { s.Hostname = "a_b" }, "--hostname"},
		{"ports on none", func(s *Spec) { s.Ports = []PortMapping{{ContainerPort: 80, Protocol: "tcp"}} }, "needs a CNI network"},
		{"-P without expose", func(s *Spec) { s.Network = "bridge"; s.PublishAll = true }, "--expose"},
		{"bad env", func(s *Spec) { s.Env = []string{"=x"} }, "KEY=VALUE"},
		{"rootfs with comma", func(s *Spec) { s.Rootfs = "/tmp/a,b" }, "may not contain"},
		{"rootfs missing", func(s *Spec) { s.Rootfs = "/nonexistent" }, "no such file"},
		{"rootfs a file", func(s *Spec) { s.Rootfs = "/etc/hostname" }, "not a directory"},
	} {
		s := base()
		tc.mod(&s)
		err := s.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}
