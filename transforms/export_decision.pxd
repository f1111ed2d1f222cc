# export_decision.py's classes as extension types, for the compiled build (see transforms/core_build.py)

cdef class PathMatcher:
    cdef public object _paths, _at_or_above, _memo
    cpdef bint matches(self, path)
    cpdef bint any(self, paths)


cdef class ExportDecider:
    cdef public object _mapped, _policy_audiences, _policy_mapped, policy_ids, _identity_on, _attribute_on
    cdef public object _expiries, _policies, _touched_kinds
    cdef public PathMatcher mapped_attributes
    cpdef tuple decide(self, before, after, now_ms, identities_changed=*, attribute_written=*)
