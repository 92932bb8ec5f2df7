package meshtest

import (
	"io"
	"net/http"
	"time"
)

// ClientReport is the outcome of GetRepeatedly, which the end-to-end tests'
// http-client role prints as JSON for the test to read.
type ClientReport struct {
	OK     int      `json:"ok"`
	Errors []string `json:"errors"`
	Bodies []string `json:"bodies"`
}

// GetRepeatedly sends n HTTP GET requests to url, each on a new connection
// and interval apart, and records each 200 response's body or the error.
func GetRepeatedly(url string, n int, interval time.Duration) ClientReport {
	var report ClientReport
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range n {
		if i > 0 && interval > 0 {
			time.Sleep(interval)
		}
		resp, err := client.Get(url)
		if err != nil {
			report.Errors = append(report.Errors, err.Error())
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			report.OK++
			report.Bodies = append(report.Bodies, string(body))
		} else {
			report.Errors = append(report.Errors, resp.Status)
		}
	}
	return report
}
