package admin

import (
	"net/url"
	"strings"
)

// safeNext keeps a redirect target taken from the request (the sign-in
// page's next, the OIDC return address) on this site: a path of this
// origin as a browser resolves it, else "/". Browsers drop tabs and
// newlines from a Location and read a backslash as a slash, so "/\t/evil"
// and "/\evil" would leave the site although they start with one slash;
// any control character or backslash, raw or percent-encoded, is refused,
// and so is anything that parses with a scheme or a host.
func safeNext(next string) string {
	if !localPath(next) || strings.HasPrefix(next, "/login") {
		return "/"
	}
	return next
}

// localPath reports whether s is a same-origin absolute path, with an
// optional query and fragment.
func localPath(s string) bool {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || unsafeURLChars(s) {
		return false
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return false
	}
	// The decoded path too: a target that is decoded once more on its
	// way (by a proxy, or a later redirect) must stay a path.
	return strings.HasPrefix(u.Path, "/") && !strings.HasPrefix(u.Path, "//") && !unsafeURLChars(u.Path)
}

// unsafeURLChars reports a backslash or an ASCII control character (C0
// or DEL) in s.
func unsafeURLChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return true
		}
	}
	return false
}
