@echo off
rem Start the web UI: create and activate the venv, then run launch.py, which installs what is
rem missing and starts the app. Settings go in webui-user.bat, which calls this file.
setlocal

rem As in A1111, the app runs from the install folder.
cd /d "%~dp0"

if not defined PYTHON (set "PYTHON=python")
if not defined VENV_DIR (set "VENV_DIR=%~dp0venv")

set SKIP_VERSION_CHECK=0
echo %COMMANDLINE_ARGS% %* | findstr /C:"--skip-python-version-check" >NUL && set SKIP_VERSION_CHECK=1

%PYTHON% -c "import sys" >NUL 2>&1
if errorlevel 1 goto :no_python

if "%VENV_DIR%"=="-" goto :check_version
if exist "%VENV_DIR%\Scripts\python.exe" goto :activate_venv

call :require_supported_python %PYTHON%
if errorlevel 1 goto :failed
echo Creating venv in %VENV_DIR%
%PYTHON% -m venv "%VENV_DIR%"
if errorlevel 1 goto :no_venv

:activate_venv
set PYTHON="%VENV_DIR%\Scripts\python.exe"
call "%VENV_DIR%\Scripts\activate.bat"

:check_version
call :require_supported_python %PYTHON%
if errorlevel 1 goto :failed

%PYTHON% -u launch.py %*
set EXIT_CODE=%ERRORLEVEL%
if not "%EXIT_CODE%"=="0" pause
exit /b %EXIT_CODE%

rem Messages that name paths are echoed outside parenthesised blocks: a ")" in a path, as in
rem "Program Files (x86)", would end the block early.
:no_python
echo Cannot run Python "%PYTHON%": install Python 3.10 to 3.12 or set PYTHON in webui-user.bat
goto :failed

:no_venv
echo Could not create a venv in "%VENV_DIR%" with %PYTHON%
goto :failed

:failed
pause
exit /b 1

rem Fails with a clear message when the interpreter (%1) is outside 3.10-3.12, unless
rem --skip-python-version-check is among the arguments or COMMANDLINE_ARGS.
:require_supported_python
if "%SKIP_VERSION_CHECK%"=="1" exit /b 0
%1 -c "import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))"
if errorlevel 1 goto :unsupported_python
exit /b 0

:unsupported_python
echo Python 3.10 to 3.12 is needed: set PYTHON in webui-user.bat, or add --skip-python-version-check to go on anyway.
exit /b 1
