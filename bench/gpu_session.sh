#!/usr/bin/env bash
# The GPU figures of issue 17 on the lent H100/H200 (see ../shared/GPU.md), in few device calls:
#   start            env + the whole PyTorch sweep, detached (setsid): it runs on while the next
#                    calls carry onnxruntime-gpu's wheel in parts (.big/ortgpu.part.*, one a call)
#   part             copy this call's wheel part; print the sweep's progress
#   final            wait for the sweep (capped), install onnxruntime-gpu from the parts, its rows,
#                    the GPU tests, then everything as one tarball in $OUT
# Results: /tmp/res on the device (rows.jsonl per sweep, profiles, logs) -> $OUT/gpu_results.tgz.
set -uo pipefail
step=${1:?step}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RES=/tmp/res; mkdir -p "$RES" /tmp/parts
export PYTHONPATH="$PWD:/tmp/extra${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cp .big/ortgpu.part.* /tmp/parts/ 2>/dev/null
G="python3 bench/gpu_models.py --work /tmp/gmwork --iters ${ITERS:-30} --warmup 5"

sweep() {  # priority order: a capped sweep loses the tail, never the head
  python3 bench/gpu_profile.py --arch deeplabv3_resnet50 --variants cl,nchw,cl_bl0 --out $RES/profile
  python3 bench/gpu_profile.py --arch denseaspp161 --variants cl,cl_stop13 --out $RES/profile
  $G --settings 512x1024x1 --modes eager_fp32,fp16_cl_graphs,fp16_cl_graphs_stop13,fp16_nchw_graphs,fp16_cl_graphs_bl0 --out $RES/torch1
  $G --models deeplabv3_resnet50,denseaspp161 --settings 512x1024x1 --modes compile_default_graphs --compile-timeout 140 --out $RES/compile
  $G --models deeplabv3_resnet50 --settings 512x1024x1 --modes aoti_fp16 --compile-timeout 140 --out $RES/aoti
  $G --settings 512x1024x8,1024x2048x1 --modes eager_fp32,fp16_cl_graphs,fp16_nchw_graphs --out $RES/torch8
  python3 bench/video_pipeline.py --arch deeplabv3_resnet50 --device cuda --precision fp16 --cuda-graphs \
    --size 512x1024 --frames 64 --rounds 3 --threads 8 --out $RES/video_pipeline_gpu
  touch $RES/sweep.done
}

case "$step" in
  start)
    python3 -m pip install -q --no-deps --target /tmp/extra .small/*.whl 2>&1 | tail -1
    { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
      python3 -c "import torchvision, onnx, onnxslim, ml_dtypes; print('torchvision', torchvision.__version__, 'onnx', onnx.__version__, 'onnxslim', onnxslim.__version__)"
      lscpu | grep 'Model name'; nproc
    } > $RES/env.txt 2>&1
    cat $RES/env.txt
    setsid nohup bash bench/gpu_session.sh sweep > $RES/sweep.log 2>&1 < /dev/null &
    sleep 5; tail -3 $RES/sweep.log
    ;;
  sweep) sweep ;;
  part) ls -la /tmp/parts; tail -4 $RES/sweep.log ;;
  final)
    W=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl  # pip needs the wheel's real name
    cat /tmp/parts/ortgpu.part.* > "$W" && python3 -m pip install -q --no-deps --no-index --target /tmp/ortsite "$W" 2>&1 | tail -1
    for _ in $(seq "${WAIT_S:-240}"); do [ -f $RES/sweep.done ] && break; sleep 1; done
    pkill -f "gpu_session.sh sweep"; pkill -f bench/gpu_models.py; pkill -f bench/video_pipeline.py; sleep 1
    export PYTHONPATH="/tmp/ortsite:$PYTHONPATH"
    python3 -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())" > $RES/ort_gpu.txt 2>&1
    cat $RES/ort_gpu.txt
    timeout 150 $G --models deeplabv3_resnet50 --settings 512x1024x1 \
      --modes ort_cuda_fp16,ort_cuda_fp16_graph,ort_cuda_fp16_nhwc_graph,ort_cuda_fp32 --out $RES/ort
    timeout 130 python3 -m pytest -m gpu -ra -q -p no:cacheprovider -x tests/test_gpu.py \
      -k "not torchrun and not aoti and not compile" > $RES/pytest_gpu.txt 2>&1
    timeout 40 python3 -m pytest -ra -q -p no:cacheprovider tests/test_models_checkpoint.py -k torchvision > $RES/pytest_torchvision.txt 2>&1
    tail -3 $RES/pytest_gpu.txt $RES/pytest_torchvision.txt
    tar czf "$OUT/gpu_results.tgz" -C /tmp res
    ;;
esac
ls -la "$OUT"
