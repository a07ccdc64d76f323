// notecheck runs Go's reference signed-note code (golang.org/x/mod/sumdb/note) on notes
// docbus writes, and signs notes for docbus to read.
//
//	notecheck verify VKEY FILE   prints the note's text if VKEY's signature verifies
//	notecheck sign SKEY FILE     prints FILE's text signed with SKEY
package main

import (
	"fmt"
	"os"

	"golang.org/x/mod/sumdb/note"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: notecheck verify|sign KEY FILE")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "verify":
		v, err := note.NewVerifier(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		n, err := note.Open(data, note.VerifierList(v))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(n.Text)
	case "sign":
		s, err := note.NewSigner(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		msg, err := note.Sign(&note.Note{Text: string(data)}, s)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(msg)
	default:
		os.Exit(2)
	}
}
