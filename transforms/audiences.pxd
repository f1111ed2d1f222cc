# audiences.py's classes as extension types, for the compiled build (see transforms/core_build.py)

cdef class AudienceSet:
    cdef public object ordered, rules, _uploads, policy_ids, _ids, event_retention_ms, reads_now, _event_rules
    cdef public object expiries, timed, _upload_values, _plan, _readers, _path_readers, time_readers
    cdef public object identity_readers
    cpdef path_readers(self, paths)
    cpdef evaluate(self, views, identities, events, now_ms, dirty=*, members=*)
    cpdef next_change_ms(self, events, now_ms, members=*)
