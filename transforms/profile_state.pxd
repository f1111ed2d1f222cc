# profile_state.py's classes as extension types, for the compiled build (see transforms/core_build.py)

cimport cython
from transforms.merge cimport MergePolicies


cdef class ProfileState:
    cdef public object seq, view, stamps, datasets, identities, events, realized, evaluated_ms, timer_ms
    cdef public object consents, sequences
    cpdef tuple apply(self, update, MergePolicies policies, keep_events)
    cpdef dict views(self, MergePolicies policies)
    cpdef tuple evaluated(self, now_ms, members=*)
    cpdef schedule(self, due_ms)
    cpdef prune_events(self, now_ms, retention_ms, max_events)


cpdef bytes encode(ProfileState state)

@cython.locals(state=ProfileState)
cpdef ProfileState decode(data)
