# Installs the header, the static library, a CMake package exporting
# cancelcore::cancelcore, and a relocatable pkg-config file.  Destinations
# are relative, so the same tree works from a prefix or inside a wheel.
# CC_INSTALL_LIBDIR and CC_INSTALL_INCLUDEDIR are set by the top level.
include(CMakePackageConfigHelpers)
set(CC_INSTALL_CMAKEDIR ${CC_INSTALL_LIBDIR}/cmake/cancelcore)

install(TARGETS cancelcore EXPORT cancelcoreTargets
  ARCHIVE DESTINATION ${CC_INSTALL_LIBDIR}
  PUBLIC_HEADER DESTINATION ${CC_INSTALL_INCLUDEDIR}
  INCLUDES DESTINATION ${CC_INSTALL_INCLUDEDIR})
install(EXPORT cancelcoreTargets NAMESPACE cancelcore::
  DESTINATION ${CC_INSTALL_CMAKEDIR})

configure_package_config_file(cmake/cancelcoreConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/cancelcoreConfig.cmake
  INSTALL_DESTINATION ${CC_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/cancelcoreConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cancelcoreConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/cancelcoreConfigVersion.cmake
  DESTINATION ${CC_INSTALL_CMAKEDIR})

# pkg-config: paths relative to the .pc file itself, so the tree can move.
file(RELATIVE_PATH CC_PC_TO_PREFIX
  /root/${CC_INSTALL_LIBDIR}/pkgconfig /root)
string(REGEX REPLACE "/$" "" CC_PC_TO_PREFIX "${CC_PC_TO_PREFIX}")
configure_file(cmake/cancelcore.pc.in ${CMAKE_CURRENT_BINARY_DIR}/cancelcore.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cancelcore.pc
  DESTINATION ${CC_INSTALL_LIBDIR}/pkgconfig)
