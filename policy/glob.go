package policy

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Glob reports whether target matches pattern: `*` matches any run of
// characters, `/` included, `?` exactly one character, `\` escapes the next
// character; everything else literally. (Not path.Match: resource URIs
// contain slashes.) Characters are UTF-8 code points; a byte that is not
// valid UTF-8 counts as one character. A malformed pattern (see ValidGlob)
// matches nothing.
//
// Matching takes at most O(len(pattern) × len(target)) steps: after a
// mismatch it only ever backtracks to the last `*`.
func Glob(pattern, target string) bool {
	g, err := compileGlob(pattern)
	if err != nil {
		return false
	}
	return g.match(target)
}

// ValidGlob reports whether pattern is a well-formed glob: not empty, valid
// UTF-8, and not ending in an unescaped `\`.
func ValidGlob(pattern string) error {
	_, err := compileGlob(pattern)
	return err
}

// globShape says how a compiled glob matches, so the common shapes skip the
// general matcher.
type globShape uint8

const (
	shapeExact  globShape = iota // no wildcard: lit
	shapeAll                     // only stars: anything
	shapePrefix                  // lit then one trailing star
	shapeSuffix                  // one leading star then lit
	shapeGeneral
)

// tokKind is one element of a compiled glob.
type tokKind uint8

const (
	tokLit  tokKind = iota // the literal text lit
	tokOne                 // ?
	tokStar                // * (consecutive stars collapse into one)
)

type globTok struct {
	kind tokKind
	lit  string
}

// glob is a compiled pattern. It is immutable and safe for concurrent use.
type glob struct {
	shape globShape
	lit   string    // shapeExact, shapePrefix, shapeSuffix
	toks  []globTok // shapeGeneral
}

var (
	errEmptyGlob     = errors.New("empty pattern")
	errGlobUTF8      = errors.New("pattern is not valid UTF-8")
	errGlobBackslash = errors.New(`pattern ends in an unescaped \`)
)

// compileGlob splits pattern into literal runs, `?` and `*`, with escapes
// resolved.
func compileGlob(pattern string) (glob, error) {
	if pattern == "" {
		return glob{}, errEmptyGlob
	}
	if !utf8.ValidString(pattern) {
		return glob{}, errGlobUTF8
	}
	var toks []globTok
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			toks = append(toks, globTok{kind: tokLit, lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '\\':
			if i+1 >= len(pattern) {
				return glob{}, errGlobBackslash
			}
			_, w := utf8.DecodeRuneInString(pattern[i+1:])
			lit.WriteString(pattern[i+1 : i+1+w])
			i += w
		case '?':
			flush()
			toks = append(toks, globTok{kind: tokOne})
		case '*':
			flush()
			if n := len(toks); n == 0 || toks[n-1].kind != tokStar {
				toks = append(toks, globTok{kind: tokStar})
			}
		default:
			lit.WriteByte(c)
		}
	}
	flush()

	g := glob{shape: shapeGeneral, toks: toks}
	switch {
	case len(toks) == 1 && toks[0].kind == tokLit:
		g = glob{shape: shapeExact, lit: toks[0].lit}
	case len(toks) == 1 && toks[0].kind == tokStar:
		g = glob{shape: shapeAll}
	case len(toks) == 2 && toks[0].kind == tokLit && toks[1].kind == tokStar:
		g = glob{shape: shapePrefix, lit: toks[0].lit}
	case len(toks) == 2 && toks[0].kind == tokStar && toks[1].kind == tokLit:
		g = glob{shape: shapeSuffix, lit: toks[1].lit}
	}
	return g, nil
}

func (g *glob) match(s string) bool {
	switch g.shape {
	case shapeExact:
		return s == g.lit
	case shapeAll:
		return true
	case shapePrefix:
		return strings.HasPrefix(s, g.lit)
	case shapeSuffix:
		return strings.HasSuffix(s, g.lit)
	}
	return matchToks(g.toks, s)
}

// matchToks is the two-pointer wildcard match: tokens are matched in order;
// on a mismatch the last star takes one more character and matching
// resumes after it. Only the last star is ever revisited, since a match
// found for the tokens after it at the earliest position is as good as any
// later one.
func matchToks(toks []globTok, s string) bool {
	ti, si := 0, 0
	star, starS := -1, 0 // the last star seen and where its run ends in s
	for si < len(s) || ti < len(toks) {
		if ti < len(toks) {
			switch t := &toks[ti]; t.kind {
			case tokStar:
				if ti == len(toks)-1 {
					return true // a trailing star takes the rest
				}
				star, starS = ti, si
				ti++
				continue
			case tokOne:
				if si < len(s) {
					_, w := utf8.DecodeRuneInString(s[si:])
					si += w
					ti++
					continue
				}
			case tokLit:
				if strings.HasPrefix(s[si:], t.lit) {
					si += len(t.lit)
					ti++
					continue
				}
			}
		}
		// Mismatch, or tokens exhausted with input left: widen the last star.
		if star < 0 || starS >= len(s) {
			return false
		}
		_, w := utf8.DecodeRuneInString(s[starS:])
		starS += w
		ti, si = star+1, starS
	}
	return true
}
