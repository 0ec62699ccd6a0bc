package conf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/berthnet/berth/internal/cnierr"
)

// Decode unmarshals a JSON config into v. Input that is not JSON is
// cnierr.ErrDecode (code 6); a value of the wrong type is
// cnierr.ErrInvalidConfig (code 7) naming the field as the config spells
// it (mtu, ipam.ranges[0][0].subnet), not as Go names it.
func Decode(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		return fmt.Errorf("%w: config is not valid JSON: %v", cnierr.ErrDecode, err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := PathAt(data, te.Offset)
		if field == "" {
			field = "config"
		}
		return invalid(field, fmt.Sprintf("%s given, %s expected", article(te.Value), kind(te.Type)))
	}
	// A type's own UnmarshalJSON refused the value (a CIDR, an address).
	return fmt.Errorf("%w: %v", cnierr.ErrInvalidConfig, err)
}

func article(what string) string {
	switch what {
	case "array", "object":
		return "an " + what
	case "bool":
		return "true or false"
	}
	return "a " + what
}

// kind names a Go type the way a config author thinks of JSON.
func kind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "an object"
}

// PathAt is the path, in the config's own spelling, of the JSON value that
// ends at byte offset (or starts there): "mtu", "ipam.ranges[0][0].subnet",
// "" for the whole document.
func PathAt(data []byte, offset int64) string {
	type frame struct {
		array   bool
		index   int
		key     string
		wantKey bool
	}
	var stack []*frame
	render := func() string {
		var b strings.Builder
		for _, f := range stack {
			if f.array {
				b.WriteString("[" + strconv.Itoa(f.index) + "]")
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(f.key)
		}
		return b.String()
	}
	valueDone := func() {
		if len(stack) == 0 {
			return
		}
		top := stack[len(stack)-1]
		if top.array {
			top.index++
		} else {
			top.wantKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		delim, isDelim := tok.(json.Delim)
		if n := len(stack); n > 0 && !stack[n-1].array && stack[n-1].wantKey {
			if isDelim { // '}': the object ends
				stack = stack[:n-1]
				valueDone()
				continue
			}
			stack[n-1].key, stack[n-1].wantKey = fmt.Sprint(tok), false
			continue
		}
		if isDelim && delim == ']' {
			stack = stack[:len(stack)-1]
			valueDone()
			continue
		}
		if dec.InputOffset() >= offset {
			return render()
		}
		if isDelim {
			stack = append(stack, &frame{array: delim == '[', wantKey: delim == '{'})
			continue
		}
		valueDone()
	}
}
