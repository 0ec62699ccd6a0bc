package readme

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	md := "# berth\n" +
		"<!-- runnable: setup -->\n```sh\nmake deps\nmake install\n```\n" +
		"## runner\n```sh\nnot marked\n```\n" +
		"text <!-- runnable --> inline is not a marker\n" +
		"<!-- runnable -->\n\n```sh\nrunner ps\n# a comment\n```\n" +
		"```go\n<!-- runnable -->\n```\n" +
		"### Multi-node\n<!--runnable-->\n```bash\nip netns add node1\n```\n"
	got, err := Parse(md)
	if err != nil {
		t.Fatal(err)
	}
	want := []Block{
		{Line: 3, Heading: "berth", Setup: true, Script: "make deps\nmake install\n"},
		{Line: 14, Heading: "runner", Script: "runner ps\n# a comment\n"},
		{Line: 23, Heading: "Multi-node", Script: "ip netns add node1\n"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d blocks %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ md, want string }{
		{"<!-- runnable -->\n```json\n{}\n```\n", "must be followed by a ```sh block"},
		{"<!-- runnable -->\nsome text\n", "must be followed by a ```sh block"},
		{"<!-- runnable: later -->\n```sh\nx\n```\n", "unknown runnable label"},
		{"<!-- runable -->\n```sh\nx\n```\n", ""},
		{"<!-- runnable please -->\n```sh\nx\n```\n", "malformed runnable marker"},
		{"<!-- runnable -->\n", "followed by no block"},
		{"<!-- runnable -->\n```sh\nx\n", "never closed"},
	} {
		_, err := Parse(tc.md)
		if tc.want == "" {
			continue // a misspelt word is just a comment
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", tc.md, err, tc.want)
		}
	}
}
