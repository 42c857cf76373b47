package admin

import "strings"

// diffLine is one line of a line diff: Op is " " (in both), "-" (only in
// the first text) or "+" (only in the second). Skipped counts unchanged
// lines folded away before this one.
type diffLine struct {
	Op      string
	Text    string
	Skipped int
}

// diffContext is how many unchanged lines are kept around each change.
const diffContext = 3

// lineDiff compares two texts line by line (longest common subsequence)
// and folds long runs of unchanged lines.
func lineDiff(x, y string) []diffLine {
	a, b := strings.Split(x, "\n"), strings.Split(y, "\n")
	// Common prefix and suffix cost nothing and keep the table small.
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	// lcs[i][j] is the LCS length of ma[i:] and mb[j:].
	lcs := make([][]int32, len(ma)+1)
	for i := range lcs {
		lcs[i] = make([]int32, len(mb)+1)
	}
	for i := len(ma) - 1; i >= 0; i-- {
		for j := len(mb) - 1; j >= 0; j-- {
			if ma[i] == mb[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var all []diffLine
	for _, l := range a[:pre] {
		all = append(all, diffLine{Op: " ", Text: l})
	}
	i, j := 0, 0
	for i < len(ma) || j < len(mb) {
		switch {
		case i < len(ma) && j < len(mb) && ma[i] == mb[j]:
			all = append(all, diffLine{Op: " ", Text: ma[i]})
			i++
			j++
		case i < len(ma) && (j == len(mb) || lcs[i+1][j] >= lcs[i][j+1]):
			all = append(all, diffLine{Op: "-", Text: ma[i]})
			i++
		default:
			all = append(all, diffLine{Op: "+", Text: mb[j]})
			j++
		}
	}
	for _, l := range a[len(a)-suf:] {
		all = append(all, diffLine{Op: " ", Text: l})
	}
	return fold(all)
}

// fold keeps diffContext unchanged lines around changes and counts the
// rest in the next kept line's Skipped (or a final marker line).
func fold(all []diffLine) []diffLine {
	keep := make([]bool, len(all))
	for i, l := range all {
		if l.Op == " " {
			continue
		}
		for k := max(0, i-diffContext); k <= min(len(all)-1, i+diffContext); k++ {
			keep[k] = true
		}
	}
	var out []diffLine
	skipped := 0
	for i, l := range all {
		if !keep[i] {
			skipped++
			continue
		}
		l.Skipped, skipped = skipped, 0
		out = append(out, l)
	}
	if skipped > 0 && len(out) > 0 {
		out = append(out, diffLine{Op: " ", Skipped: skipped})
	}
	return out
}
