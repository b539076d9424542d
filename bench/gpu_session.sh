#!/usr/bin/env bash
# The GPU figures of issue 9, on the lent H100/H200 (see ../shared/GPU.md): the tree travels,
# torch/torchvision are there, onnxslim (and onnxruntime-gpu, when carried in parts) are added.
# Usage: bash bench/gpu_session.sh STEP   with STEP = tests | eager | compile | aoti | ort
# Writes to $OUT (the device tool brings it back).
set -uo pipefail
step=${1:?step}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD:/tmp/extra${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d /tmp/extra/onnxslim ]; then
  python3 -m pip install -q --no-deps --target /tmp/extra .big/onnxslim-*.whl .big/colorama-*.whl 2>&1 | tail -1
  python3 -c "import ml_dtypes" 2>/dev/null || python3 -m pip install -q --no-deps --target /tmp/extra .big/ml_dtypes-*.whl
fi
mkdir -p /tmp/parts && cp .big/ortgpu.part.* /tmp/parts/ 2>/dev/null
case "$step" in
  tests)
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'torchvision', torchvision.__version__)"
      echo "--- TensorRT:"; python3 -c "import tensorrt" 2>&1 | tail -1; ldconfig -p | grep -i nvinfer || echo "no libnvinfer in ldconfig"
      python3 -m pip show tensorrt onnxruntime-gpu 2>&1 | grep -E "^(Name|Version)|not found"
      python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    } > "$OUT/env.txt" 2>&1
    timeout 330 python3 -m pytest -m gpu -ra -q -p no:cacheprovider --continue-on-collection-errors tests/ > "$OUT/pytest_gpu.txt" 2>&1
    timeout 60 python3 -m pytest -ra -q -p no:cacheprovider tests/test_models_checkpoint.py > "$OUT/pytest_torchvision.txt" 2>&1
    ;;
  eager)
    # fp16_cl_autocast = the runner before half weights + conv-BN folding, for the comparison
    python3 bench/gpu_models.py --modes eager_fp32,fp16_cl_autocast,fp16_cl,fp16_cl_graphs --out "$OUT/gpu_eager" --work /tmp/gmwork
    python3 bench/video_pipeline.py --arch deeplabv3_resnet50 --device cuda --precision fp16 --cuda-graphs \
      --size 512x1024 --frames 64 --rounds 3 --threads 8 --out "$OUT/video_pipeline_gpu"
    ;;
  compile)
    python3 bench/gpu_models.py --modes compile --settings 512x1024x1 --compile-timeout "${COMPILE_TIMEOUT:-170}" \
      --out "$OUT/gpu_compile" --work /tmp/gmwork
    ;;
  aoti)
    python3 bench/gpu_models.py --modes aoti_fp16 --settings "${AOTI_SETTINGS:-512x1024x1}" \
      --compile-timeout "${COMPILE_TIMEOUT:-170}" --out "$OUT/gpu_aoti" --work /tmp/gmwork
    ;;
  ort)
    W=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl  # pip needs the wheel's real name
    cat /tmp/parts/ortgpu.part.* > "$W" && python3 -m pip install -q --no-deps --no-index --target /tmp/ortsite "$W"
    export PYTHONPATH="/tmp/ortsite:$PYTHONPATH"
    python3 -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())" > "$OUT/ort_gpu.txt" 2>&1
    timeout 200 python3 -m pytest -m gpu -ra -q -p no:cacheprovider --continue-on-collection-errors tests/test_gpu.py -k onnxruntime >> "$OUT/ort_gpu.txt" 2>&1
    # uint8 upload + on-GPU normalisation since stop 13 (host normalisation was 2.25 ms of 6.58)
    python3 bench/gpu_models.py --models deeplabv3_resnet50 --modes ort_cuda_fp32,ort_cuda_fp16 --settings 512x1024x1 \
      --out "$OUT/gpu_ort" --work /tmp/gmwork
    ;;
esac
ls -R "$OUT" | head -50
