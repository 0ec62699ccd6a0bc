// Package readme finds the README's command blocks that are marked
// runnable, so that a test can run them as written and the README cannot
// drift from what berth does.
//
// A block is marked by an HTML comment (invisible on GitHub) on the line
// before its opening fence:
//
//	<!-- runnable -->
//	```sh
//	runner run --rm --net bridge -- ping -c 3 10.88.0.1
//	```
//
// "<!-- runnable: setup -->" marks the set-up commands of a fresh machine
// (`make deps`, `make install`): they run before each runnable block. Only
// ```sh and ```bash blocks can be marked; a marker before anything else is
// an error, so a typo cannot silently drop a block.
package readme

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
)

// Block is one marked command block.
type Block struct {
	Line    int    // line of the opening fence, 1-based
	Heading string // the nearest heading above it, e.g. "runner"
	Setup   bool   // marked "runnable: setup"
	Script  string // the commands, as written
}

// Name is how tests call the block: its heading and line.
func (b Block) Name() string { return fmt.Sprintf("%s (line %d)", b.Heading, b.Line) }

var (
	markerRE  = regexp.MustCompile(`^<!--\s*runnable(?::\s*(\w+))?\s*-->\s*$`)
	headingRE = regexp.MustCompile(`^#+\s+(.*)$`)
)

// Parse returns the marked blocks of a Markdown text in order.
func Parse(markdown string) ([]Block, error) {
	var (
		blocks  []Block
		heading string
		pending *Block // marker seen, fence expected
		open    *Block // inside a marked block
		fenced  bool   // inside any fenced block
	)
	sc := bufio.NewScanner(strings.NewReader(markdown))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		trimmed := strings.TrimSpace(text)
		switch {
		case open != nil:
			if trimmed == "```" {
				blocks = append(blocks, *open)
				open, fenced = nil, false
				continue
			}
			open.Script += text + "\n"
		case fenced:
			if strings.HasPrefix(trimmed, "```") {
				fenced = false
			}
		case pending != nil:
			if trimmed == "" {
				continue
			}
			if trimmed != "```sh" && trimmed != "```bash" {
				return nil, fmt.Errorf("line %d: a runnable marker must be followed by a ```sh block, not %q", line, trimmed)
			}
			pending.Line, pending.Heading = line, heading
			open, pending, fenced = pending, nil, true
		case strings.HasPrefix(trimmed, "```"):
			fenced = true
		case markerRE.MatchString(trimmed):
			label := markerRE.FindStringSubmatch(trimmed)[1]
			if label != "" && label != "setup" {
				return nil, fmt.Errorf("line %d: unknown runnable label %q (only \"setup\")", line, label)
			}
			pending = &Block{Setup: label == "setup"}
		case strings.HasPrefix(trimmed, "<!--") && strings.Contains(trimmed, "runnable"):
			return nil, fmt.Errorf("line %d: malformed runnable marker %q (write <!-- runnable --> or <!-- runnable: setup -->)", line, trimmed)
		default:
			if m := headingRE.FindStringSubmatch(text); m != nil {
				heading = strings.TrimSpace(m[1])
			}
		}
	}
	if pending != nil {
		return nil, fmt.Errorf("a runnable marker at the end is followed by no block")
	}
	if open != nil {
		return nil, fmt.Errorf("line %d: runnable block never closed", open.Line)
	}
	return blocks, sc.Err()
}
