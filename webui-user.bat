@echo off
rem Uncomment nothing: set the values below to your need, then run this file.

rem Python executable (default: python)
set PYTHON=
rem Folder of the venv (default: venv next to webui.bat; "-" = no venv)
set VENV_DIR=
rem Command-line arguments for webui.py, for example: set COMMANDLINE_ARGS=--listen --api --medvram
set COMMANDLINE_ARGS=
rem Install command for torch, run as "python -m %TORCH_COMMAND%" when torch is missing or with --reinstall-torch
rem set TORCH_COMMAND=pip install torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/cu128
rem Requirements file to install (relative to the install folder)
rem set REQS_FILE=requirements.txt

call "%~dp0webui.bat" %*
