# record_format.py's classes as extension types, for the compiled build (see transforms/core_build.py)

cdef class RecordFormatter:
    cdef public object _tree, _member_tree, _head, _tail, _entries
    cpdef str _entry(self, tuple entry)
    cpdef bytes format(self, view, ups, identities, metadata=*)


cpdef str _members(view, tuple tree)
