package agent

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// podLocks serializes enrollment and unenrollment per pod, so that the pod
// informer, CNI requests and start-up reconciliation never run two of them
// for one pod at once. A lock exists only while someone holds or awaits it.
type podLocks struct {
	mu    sync.Mutex
	locks map[types.UID]*podLock
}

type podLock struct {
	sync.Mutex
	// users counts holders and waiters; the last one deletes the lock.
	users int
}

// lock blocks until the caller holds uid's lock and returns its unlock.
func (l *podLocks) lock(uid types.UID) (unlock func()) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[types.UID]*podLock{}
	}
	pl := l.locks[uid]
	if pl == nil {
		pl = &podLock{}
		l.locks[uid] = pl
	}
	pl.users++
	l.mu.Unlock()

	pl.Lock()
	return func() {
		pl.Unlock()
		l.mu.Lock()
		pl.users--
		if pl.users == 0 {
			delete(l.locks, uid)
		}
		l.mu.Unlock()
	}
}

// held returns how many pods have a lock held or awaited.
func (l *podLocks) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.locks)
}
