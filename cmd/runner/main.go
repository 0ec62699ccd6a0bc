// Command runner is berth's small container runner; see runner/cli.
package main

import (
	"os"

	"github.com/berthnet/berth/runner/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
