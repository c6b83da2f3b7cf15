#!/usr/bin/env bash
#########################################################
# Uncomment and change the variables below to your need:#
#########################################################

# Folder of the installation, without trailing slash (default: the folder of webui.sh)
#install_dir="/home/$(whoami)/stable-diffusion-webui"

# Command-line arguments for webui.py, for example: export COMMANDLINE_ARGS="--listen --api --medvram"
#export COMMANDLINE_ARGS=""

# python3 executable (default: the first of python3.12, python3.11, python3.10, python3 that runs)
#python_cmd="python3"

# python3 venv without trailing slash (default: venv in the install folder; "-" = no venv)
#venv_dir="venv"

# Install command for torch, run as "python -m $TORCH_COMMAND" when torch is missing or with --reinstall-torch
#export TORCH_COMMAND="pip install torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/cu128"

# Requirements file to install (relative to the install folder)
#export REQS_FILE="requirements.txt"
