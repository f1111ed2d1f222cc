"""The base of errors a user can fix (config, inputs, stream, permissions): the command lines
print them as one line and exit non-zero, without a traceback."""


class UserError(Exception):
    pass
