from transforms import core_build

core_build.install()   # before any module of the compiled core is imported
