// Command sigil is Sigil's command-line tool.
package main

import (
	"os"

	"github.com/sigil-net/sigil/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
