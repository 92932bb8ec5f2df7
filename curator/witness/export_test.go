package witness

// SetTokenSigChunk sets the entries per token-signature request and
// returns a function that restores the previous value.
func SetTokenSigChunk(n int64) (restore func()) {
	old := tokenSigChunk
	tokenSigChunk = n
	return func() { tokenSigChunk = old }
}
