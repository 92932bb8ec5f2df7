package agent

import (
	"runtime"
	"sync"
	"testing"
)

// TestPodLocksSerializePerPod runs many goroutines through one pod's lock
// and checks that only one holds it at a time, that another pod's lock is
// free meanwhile, and that no lock is kept once all are released.
func TestPodLocksSerializePerPod(t *testing.T) {
	var locks podLocks
	var (
		mu                sync.Mutex
		inside, maxInside int
		wg                sync.WaitGroup
		otherAcquired     = make(chan struct{})
	)
	unlockFirst := locks.lock("pod-a")
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := locks.lock("pod-a")
			defer unlock()
			mu.Lock()
			inside++
			maxInside = max(maxInside, inside)
			mu.Unlock()
			// Give the other goroutines a chance to enter too.
			for range 10 {
				runtime.Gosched()
			}
			mu.Lock()
			inside--
			mu.Unlock()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		unlock := locks.lock("pod-b")
		close(otherAcquired)
		unlock()
	}()
	<-otherAcquired
	unlockFirst()
	wg.Wait()

	if maxInside != 1 {
		t.Errorf("%d goroutines held one pod's lock at once, want 1", maxInside)
	}
	if n := locks.held(); n != 0 {
		t.Errorf("%d pod locks kept after every holder released, want 0", n)
	}
}
